"""hosts/base.py (what both hosts share) and the package's import structure."""

from __future__ import annotations

import ast
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from urecjpq_plugin import JPQConfig, JPQConfigError, register_id_tables
from urecjpq_plugin.apply import JPQCheckpointError, building_for_load, is_building_for_load
from urecjpq_plugin.hosts import base
from urecjpq_plugin.inject import inject_jpq

PACKAGE = Path(__file__).resolve().parents[1] / "urecjpq_plugin"



# -- import structure ------------------------------------------------------------------------------
def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.AST, lazy: bool):
    """Import nodes of a module: at module level, and with ``lazy`` also those inside functions."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif lazy or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _imports(node, lazy)


def import_graph(lazy: bool = True) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (``lazy``: imports inside functions count too)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _imports(ast.parse(path.read_text(), str(path)), lazy):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                # `from pkg import sub` imports the submodule; the package itself is an ancestor, loaded first anyway
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in files]
                candidates = subs or [target]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            edges |= {c for c in candidates if c in files and c != name and not name.startswith(f"{c}.")}
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_graph_sees_lazy_imports():
    graph, eager = import_graph(), import_graph(lazy=False)
    recbole, topk = "urecjpq_plugin.hosts.recbole.hook", "urecjpq_plugin.hosts.recbole.topk"
    assert topk in graph[recbole] and topk not in eager[recbole]  # imported inside a function
    assert "urecjpq_plugin.hosts.base" in eager["urecjpq_plugin.hosts.mmrec.hook"]
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_no_import_cycles():
    assert find_cycle(import_graph(lazy=False)) is None
    assert find_cycle(import_graph()) is None  # imports inside functions too


def test_core_imports_no_host():
    graph = import_graph()
    core = [m for m in graph if m.count(".") == 1 and m != "urecjpq_plugin.cli"]  # urecjpq_plugin/<name>.py
    assert "urecjpq_plugin.inject" in core and "urecjpq_plugin.apply" in core
    offenders = {m: sorted(t for t in graph[m] if ".hosts" in t) for m in core}
    assert {m: t for m, t in offenders.items() if t} == {}


def test_plugin_never_imports_the_bench():
    """The bench is its own package (urecjpq_bench): nothing in the plugin's import path reaches it."""
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        names = {n.module or "" for n in _imports(ast.parse(path.read_text()), True) if isinstance(n, ast.ImportFrom)}
        names |= {a.name for n in _imports(ast.parse(path.read_text()), True) if isinstance(n, ast.Import) for a in n.names}
        if bad := sorted(m for m in names if m.split(".")[0] == "urecjpq_bench"):
            offenders[module_name(path)] = bad
    assert offenders == {}


# -- the shared pieces ---------------------------------------------------------------------------------
class People(nn.Module):
    def __init__(self, users: int = 12, items: int = 20):
        super().__init__()
        self.people = nn.Embedding(users, 8)
        self.things = nn.Parameter(torch.randn(items, 8))
        self.head = nn.Linear(8, 8)


COUNTS = {"user": 12, "item": 20}


def compress(model: nn.Module, config=None) -> None:
    refs, _ = base.find_tables(model, COUNTS, ("user", "item"), config)
    jcfg = JPQConfig(M=2, ksub=4, code_assign="random")
    inject_jpq(model, refs, base.codes_source(jcfg, COUNTS, lambda: {e: torch.zeros(n, 2, dtype=torch.uint8)
                                                                    for e, n in COUNTS.items()}), jcfg)


def test_tables_come_from_registry_then_yaml_then_host_specs_then_default_rule():
    model = People()
    yaml = {"jpq_tables": {"user": ["people"], "item": "things"}}
    with pytest.raises(Exception, match="model People has no ID table.*jpq_tables"):
        base.find_tables(model, COUNTS, ("user", "item"))  # the default rule needs user/item names
    refs, source = base.find_tables(model, COUNTS, ("user", "item"), yaml)
    assert source == "yaml" and [(r.path, r.entity, r.kind) for r in refs] == [
        ("people", "user", "embedding"), ("things", "item", "parameter")]
    refs, source = base.find_tables(model, COUNTS, ("user",), None, {"user": ["people", "absent"]})
    assert source == "host specs" and [r.path for r in refs] == ["people"]  # absent spec paths skipped
    register_id_tables(People, user=["people"])
    refs, source = base.find_tables(model, COUNTS, ("user", "item"), yaml, {"item": ["things"]})
    assert source == "registry" and [r.path for r in refs] == ["people"]


@pytest.mark.parametrize("value", [["people"], {"user": 3}, "user: [1, 2]", {}])
def test_bad_yaml_tables_is_one_line(value):
    with pytest.raises(JPQConfigError, match=r"^jpq_tables=.* is invalid; give table paths by entity") as err:
        base.yaml_tables({"jpq_tables": value})
    assert "\n" not in str(err.value)


def test_yaml_tables_from_a_string():
    assert base.yaml_tables({"jpq_tables": "{user: [people], item: [things.table]}"}) == {
        "user": ("people",), "item": ("things.table",)}
    assert base.yaml_tables({}) is None and base.yaml_tables({"jpq_tables": None}) is None


def test_state_check_both_directions_and_raw_parameters():
    plain, compressed = People(), People()
    compress(compressed, {"jpq_tables": {"user": ["people"], "item": ["things"]}})
    with pytest.raises(JPQCheckpointError, match=r"holds JPQ-compressed tables \(people.sub_embeddings"):
        base.check_state_matches(plain, compressed.state_dict())
    with pytest.raises(JPQCheckpointError, match="holds an uncompressed table people.weight but People was built"):
        base.check_state_matches(compressed, plain.state_dict())
    state = compressed.state_dict()
    state.pop("things_jpq.sub_embeddings")
    state["things"] = torch.zeros(20, 8)
    with pytest.raises(JPQCheckpointError, match="uncompressed table things but"):
        base.check_state_matches(compressed, state)
    base.check_state_matches(compressed, compressed.state_dict())  # agreeing states pass
    base.check_state_matches(plain, plain.state_dict())


def test_wrapped_class_compresses_after_init_and_checks_states():
    calls = []

    class Host(nn.Module):
        def __init__(self, config, data):
            super().__init__()
            self.people = nn.Embedding(12, 8)
            self.things = nn.Embedding(20, 8)

    def compress_hook(model, config, data):
        calls.append(data)
        compress(model, config)

    cache: dict = {}
    wrapped = base.wrap_model_class(Host, compress_hook, cache)
    assert wrapped.__name__ == "Host" and issubclass(wrapped, Host)
    assert base.wrap_model_class(Host, compress_hook, cache) is wrapped
    assert base.wrap_model_class(wrapped, compress_hook, {}) is wrapped  # never wrapped twice
    config = {"jpq": True, "jpq_tables": {"user": ["people"], "item": ["things"]}}
    model = wrapped(config, "data")
    assert calls == ["data"] and type(model.people).__name__ == "JPQEmbedding"
    assert type(wrapped({"jpq": False}, "data").people) is nn.Embedding
    with pytest.raises(JPQCheckpointError):
        model.load_state_dict(Host(None, None).state_dict())


def test_codes_source_computes_once_and_never_while_building_for_load():
    jcfg = JPQConfig(M=2, ksub=300)
    computed = []

    def compute():
        computed.append(1)
        return {"user": torch.ones(12, 2, dtype=torch.int16)}

    codes_for = base.codes_source(jcfg, COUNTS, compute)
    codes_for("user"), codes_for("user")
    assert computed == [1]
    assert not is_building_for_load()
    with building_for_load():
        assert is_building_for_load()
        placeholder = base.codes_source(jcfg, COUNTS, lambda: pytest.fail("codes computed while loading"))
        codes = placeholder("item")
    assert not is_building_for_load()
    assert codes.shape == (20, 2) and codes.dtype == torch.uint16 and not codes.long().any()


def test_patches_undo_restores_every_attribute():
    module = types.ModuleType("host_module")
    module.get_model = original = object()

    class Config:
        def init(self):
            return "original"

    patches = base.Patches()
    patches.set(module, "get_model", "hooked")
    patches.set(module, "get_model", "hooked twice")
    patches.set(module, "added", 1)
    patches.set(Config, "init", lambda self: "patched")
    assert Config().init() == "patched"
    patches.undo()
    assert module.get_model is original and not hasattr(module, "added")
    assert Config().init() == "original" and "init" in vars(Config)


def test_recbole_activate_then_deactivate_leaves_recbole_as_it_was():
    pytest.importorskip("recbole")
    from urecjpq_plugin.hosts.recbole import hook as host

    host.activate()  # the recbole_compat shims stay (they are not the hook)
    host.deactivate()
    import recbole.quick_start as qs_pkg
    import recbole.trainer.trainer as trainer_module
    import recbole.utils as utils_pkg
    from recbole.quick_start import quick_start
    from recbole.utils import utils

    def bindings():
        return {"qs.get_model": quick_start.get_model, "utils.get_model": utils.get_model,
                "utils_pkg.get_model": utils_pkg.get_model, "qs.load": quick_start.load_data_and_model,
                "qs_pkg.load": qs_pkg.load_data_and_model, "trainer.torch": trainer_module.torch}

    before = bindings()
    assert before["trainer.torch"] is torch
    host.activate()
    assert host.is_active() and quick_start.get_model is not before["qs.get_model"]
    assert trainer_module.torch is not torch or torch.__version__ < "2.6"
    model_cls = quick_start.get_model("NeuMF")  # its module gets the torch view too
    import recbole.model.general_recommender.neumf as neumf

    host.deactivate()
    after = bindings()
    assert all(after[k] is before[k] for k in before), {k for k in before if after[k] is not before[k]}
    assert neumf.torch is torch and not host.is_active()
    assert issubclass(model_cls, neumf.NeuMF)
    host.activate()  # the conftest fixture expects the host active in later tests
