"""ROS parameters of every node: the ExperimentConfig, flattened to dotted names.

A node declares one parameter per configuration field (``ppo.clip_range``, ``env.num_envs``...)
with the field's docstring as description, reads the ``/**`` and ``<node>`` blocks of the params
file through rcl, refuses parameters that match no field (a typo must not fall back to a
default), and validates every later ``ros2 param set`` through the dataclasses' own checks.
"""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
import typing
from typing import Any, Callable, Mapping

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from vla_rl_ros.core.config import ExperimentConfig
from vla_rl_ros.core.config_io import ConfigError, flatten, from_dict, to_dict, unflatten

BUILTIN_PARAMETERS = frozenset({"use_sim_time", "start_type_description_service"})


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """``{field: docstring}`` from the string literal that follows each field in the class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def field_descriptions(cls: type = ExperimentConfig, prefix: str = "") -> dict[str, str]:
    """Dotted parameter name -> description, for every leaf field of the config tree."""
    out: dict[str, str] = {}
    docs = _attribute_docstrings(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            out.update(field_descriptions(hints[f.name], name + "."))
        else:
            out[name] = docs.get(f.name) or f"{name} (see {cls.__name__})"
    return out


def _plain(value: Any) -> Any:
    """Parameter values come back as array.array or tuples; the config wants plain lists."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "array":
        return list(value)
    return value


class ExperimentParameters:
    """Declares, reads and validates a node's parameters; ``config`` is the current ExperimentConfig.

    ``extra`` adds node-specific parameters: ``{name: (default, description)}``; their values are
    in ``extra_values``. ``on_change(cfg, changed_names)`` runs after a validated set.
    """

    def __init__(self, node: Node, extra: Mapping[str, tuple[Any, str]] | None = None,
                 on_change: Callable[[ExperimentConfig, list[str]], None] | None = None) -> None:
        self._node = node
        self._on_change = on_change
        self._extra = dict(extra or {})
        defaults = flatten(to_dict(ExperimentConfig()))
        descriptions = field_descriptions()
        for name, value in defaults.items():
            node.declare_parameter(name, value, ParameterDescriptor(
                description=descriptions.get(name, name), dynamic_typing=True))
        for name, (value, description) in self._extra.items():
            node.declare_parameter(name, value, ParameterDescriptor(description=description,
                                                                    dynamic_typing=True))
        self._defaults = defaults
        self._known = set(defaults) | set(self._extra)
        unknown = sorted(set(node._parameter_overrides) - self._known - BUILTIN_PARAMETERS)
        if unknown:
            raise ConfigError(f"node {node.get_name()}: unknown parameter(s) {', '.join(unknown)}; "
                              f"they match no configuration field")
        self.config = self._build({})
        node.add_on_set_parameters_callback(self._validate)
        node.add_post_set_parameters_callback(self._applied)

    @property
    def extra_values(self) -> dict[str, Any]:
        """Current values of the node-specific parameters."""
        return {name: _plain(self._node.get_parameter(name).value) for name in self._extra}

    def _build(self, changed: Mapping[str, Any]) -> ExperimentConfig:
        names = [n for n in self._known if n not in self._extra]
        flat = {n: _plain(self._node.get_parameter(n).value) for n in names}
        flat.update({k: _plain(v) for k, v in changed.items() if k in flat})
        # rcl reads an empty YAML list ("render_gpus: []") as "not set": it means an empty list.
        flat = {k: ([] if isinstance(self._defaults[k], list) else self._defaults[k]) if v is None else v
                for k, v in flat.items()}
        return from_dict(ExperimentConfig, unflatten(flat))

    def _validate(self, parameters: list[Parameter]) -> SetParametersResult:
        unknown = [p.name for p in parameters if p.name not in self._known | BUILTIN_PARAMETERS]
        if unknown:
            return SetParametersResult(successful=False, reason=f"unknown parameter(s) {unknown}")
        try:
            self._build({p.name: p.value for p in parameters})
        except ConfigError as err:
            return SetParametersResult(successful=False, reason=str(err))
        return SetParametersResult(successful=True)

    def _applied(self, parameters: list[Parameter]) -> None:
        self.config = self._build({})
        if self._on_change is not None:
            self._on_change(self.config, [p.name for p in parameters])
