import pytest

from honer.errors import PassError
from honer.ir import Graph
from honer.passes import parse_spec, run_pipeline
from honer.passes.pipeline import split_specs


def graph_with_dead_code() -> Graph:
    g = Graph()
    x = g.add_input("x", (4,), "float32")
    g.op("exp", g.op("neg", x))  # dead
    g.set_outputs([g.op("relu", x)])
    return g


def test_spec_parsing():
    assert parse_spec("tome:r=8,blocks=0-5") == ("tome", {"r": "8", "blocks": "0-5"})
    assert parse_spec("dce") == ("dce", {})
    with pytest.raises(PassError, match="key=value"):
        parse_spec("tome:r")
    assert split_specs("exact,tome:r=8,mode=prune, layer_skip:count=2") == \
        ["exact", "tome:r=8,mode=prune", "layer_skip:count=2"]


def test_dce_removes_dead_nodes_and_reports_it_without_touching_its_input():
    g = graph_with_dead_code()
    out, reports = run_pipeline(g, ["dce"])
    assert len(g.nodes) == 3 and len(out.nodes) == 1
    assert reports[0].name == "dce" and reports[0].matches == 2
    assert reports[0].effect["nodes_after"] == 1


def test_unknown_pass_and_option_are_clear_errors():
    g = graph_with_dead_code()
    with pytest.raises(PassError, match="unknown pass; known passes: dce"):
        run_pipeline(g, ["nope"])
    with pytest.raises(PassError, match="unknown option"):
        run_pipeline(g, ["dce:r=3"])
