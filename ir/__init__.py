"""honer's graph IR. Imports nothing else of honer but its error types."""

from .graph import Graph, Node, TensorType, Value
from .interpret import check_inputs, interpret
from .ops import all_ops, get_schema
from .text import dump
from .verify import verify

__all__ = ["Graph", "Node", "TensorType", "Value", "interpret", "check_inputs", "verify",
           "dump", "get_schema", "all_ops"]
