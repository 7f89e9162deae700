"""The declared hooks of ``EmbeddingMethod`` on every registered method and on wrapped compositions;
``WrappedMethod``'s delegation; the typed nested ``base`` option (errors, old spelling, round trip)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from recsys.cli import main
from recsys.config import ConfigError, load_config
from recsys.embeddings import (
    EmbeddingMethod,
    MethodContext,
    WrappedMethod,
    WrapperOptions,
    available_methods,
    build_method,
    get_method,
    method_spec,
    parse_options,
)
from tests.unit.test_method_contract import CTX, SETTINGS, Setting, random_kjt

ROOT = Path(__file__).resolve().parents[2]
UNIFIED = {"method": "unified", "options": {"num_tables": 2, "exact_below": 3}}
# (registered name, options, compression): every method as the contract tests build it, and wrapped compositions
CASES: list[tuple[str, dict[str, Any], float | None]] = [
    (n, SETTINGS.get(n, Setting()).options, SETTINGS.get(n, Setting()).compression) for n in available_methods()
] + [
    ("dsl", {"base": UNIFIED}, 2.0),
    ("dsl", {"base": "hash"}, 2.0),
    ("dsl", {"base": "qr"}, 2.0),
    ("dsl", {"base": {"method": "hybrid", "options": {"hot_share": 0.9}}}, 2.0),
    ("optembed", {"base": UNIFIED}, None),
]
IDS = [f"{n}:{json.dumps(o, sort_keys=True)}" for n, o, _ in CASES]
HOOKS = (
    "prepare",
    "output_dims",
    "shares_rows_across_features",
    "aux_loss",
    "separate_optimizers",
    "on_train_begin",
    "on_train_step",
    "on_train_resume",
    "phases",
    "enter_phase",
    "phase_state",
    "load_phase_state",
    "diagnostics",
    "search",
    "collision_stats",
    "reports_collisions",
    "export",
    "from_export",
    "id_scheme",
    "ebc",
    "base",
)


def build(name: str, options: dict[str, Any], compression: float | None, seed: int = 0) -> EmbeddingMethod:
    torch.manual_seed(seed)
    return build_method(name, CTX.with_budget(compression=compression) if compression else CTX, options)


def kjt_for(method: EmbeddingMethod, batch: int, seed: int = 0):
    """Ids of the method's scheme (``random_kjt`` picks them by a registered name)."""
    return random_kjt("unified" if method.id_scheme == "raw" else "full", batch, seed)


@pytest.mark.parametrize(("name", "options", "compression"), CASES, ids=IDS)
def test_declared_hooks_answer(name: str, options: dict[str, Any], compression: float | None) -> None:
    method = build(name, options, compression)
    spec = method_spec(name, options)
    assert [m for m in method.modules() if type(m) is EmbeddingBagCollection] == [method.ebc], "the tables are the one stock EBC `ebc`"
    assert method.id_scheme == spec.id_scheme == type(method).id_scheme_for(method.options) in ("index", "raw")
    assert spec.uses_value_counts == type(method).value_counts_for(method.options)
    if isinstance(method, WrappedMethod):
        base = method.base
        assert method.id_scheme == base.id_scheme and method.ebc is base.ebc
        assert spec.uses_value_counts == base.uses_value_counts and method.output_dims() == base.output_dims()
        assert method.shares_rows_across_features() == base.shares_rows_across_features()
        assert method.reports_collisions() == base.reports_collisions()
    else:
        assert method.id_scheme == type(method).ids
    assert isinstance(method.shares_rows_across_features(), bool)
    table_params = {id(p) for p in method.ebc.parameters()}
    own = {id(p) for p in method.parameters()}
    for params, factory in method.separate_optimizers():
        assert params and all(id(p) in own and id(p) not in table_params for p in params)
        assert isinstance(factory(params), torch.optim.Optimizer)
    method.train()
    method.on_train_begin(4)
    out = method(method.prepare(kjt_for(method, 16)))
    aux = method.aux_loss()
    assert aux is None or (aux.dim() == 0 and torch.isfinite(aux))
    (out.values().sum() + (aux if aux is not None else 0)).backward()
    method.on_train_step(0)
    method.on_train_resume(1)
    json.dumps(method.diagnostics(), default=str)
    assert all(isinstance(v, torch.Tensor) for v in method.phase_state().values())
    ids = {f.name: np.arange(1, f.cardinality, dtype=np.int64) for f in CTX.features}
    stats = method.collision_stats(ids)
    assert (stats is not None) == method.reports_collisions()
    if stats is not None:
        assert set(stats["features"]) == set(ids) and all(s["values"] == len(ids[n]) for n, s in stats["features"].items())


class Echo(WrappedMethod):
    """A wrapper that changes nothing (not registered): every hook is the base's."""

    name = "echo"

    def forward(self, features):
        return self.base(features)

    def memory_bytes(self) -> int:
        return self.base.memory_bytes()


def test_wrapper_is_handed_its_base_and_delegates_every_hook() -> None:
    wrapper = Echo.build(CTX, WrapperOptions.model_validate({"base": UNIFIED}))
    base = wrapper.base
    assert isinstance(wrapper, Echo) and base.name == "unified" and base.num_tables == 2 and wrapper.id_scheme == "raw"
    assert Echo.id_scheme_for(wrapper.options) == "raw"
    calls: list[tuple[str, Any]] = []
    aux, optimizers, stats = torch.tensor(1.5), [([torch.nn.Parameter(torch.ones(1))], torch.optim.SGD)], {"rows": 7}
    base.aux_loss = lambda: aux
    base.separate_optimizers = lambda: optimizers
    base.collision_stats = lambda ids: stats | {"asked": sorted(ids)}
    base.diagnostics = lambda: {"from": "base"}
    for hook in ("on_train_begin", "on_train_step", "on_train_resume"):
        setattr(base, hook, lambda n, hook=hook: calls.append((hook, n)))
    wrapper.on_train_begin(10), wrapper.on_train_step(3), wrapper.on_train_resume(4)
    assert calls == [("on_train_begin", 10), ("on_train_step", 3), ("on_train_resume", 4)]
    assert wrapper.aux_loss() is aux and wrapper.separate_optimizers() is optimizers
    assert wrapper.collision_stats({"C1": np.zeros(1)}) == {"rows": 7, "asked": ["C1"]} and wrapper.reports_collisions()
    assert wrapper.diagnostics() == {"base": {"from": "base"}}
    kjt = random_kjt("unified", 8)
    assert wrapper.prepare(kjt).keys() == base.prepare(kjt).keys() and torch.equal(wrapper(kjt).values(), base(kjt).values())


def test_base_is_built_in_the_wrappers_base_context() -> None:
    ctx = CTX.with_budget(compression=4)
    dsl = build_method("dsl", ctx, {"base": "hash", "base_compression": 2})
    assert dsl.base.ctx.budget_bytes == CTX.with_budget(compression=2).budget_bytes and dsl.memory_bytes() <= ctx.budget_bytes
    optembed = build_method("optembed", ctx, {"base": "full"})
    assert optembed.base.ctx.budget_bytes is None and optembed.base.ctx.features == ctx.features


def test_a_bad_base_option_names_its_full_key() -> None:
    with pytest.raises(ValueError) as info:
        parse_options("dsl", {"base": {"method": "unified", "options": {"num_tables": 0}}})
    assert str(info.value) == "invalid options for method 'dsl': base.options.num_tables: Input should be greater than or equal to 1"
    with pytest.raises(ValueError, match=r"base\.options\.nope: Extra inputs are not permitted"):
        parse_options("optembed", {"base": {"method": "full", "options": {"nope": 1}}})
    with pytest.raises(ValueError, match=r"base\.method: unknown method 'unifed'; available: auto, dsl, full"):
        parse_options("dsl", {"base": "unifed"})
    with pytest.raises(ValueError, match=r"base\.extra: Extra inputs are not permitted"):
        parse_options("dsl", {"base": {"method": "full", "extra": 1}})


def test_a_bad_base_option_in_a_config_names_the_key_and_the_set_argument() -> None:
    bad = "embedding.options.base.options.num_tables=0"
    with pytest.raises(ConfigError) as info:
        load_config("quickstart", ["embedding.method=dsl", "embedding.options.base.method=unified", bad])
    message = str(info.value)
    assert "embedding.options: invalid options for method 'dsl': base.options.num_tables: Input should be greater than or equal to 1" in message
    assert message.startswith(f"--set {bad}: embedding.options: "), message  # the argument that set the bad key, alone


def test_old_spelling_bare_names_and_dumps_give_one_value() -> None:
    typed = parse_options("dsl", {"base": UNIFIED, "density": 0.3})
    assert parse_options("dsl", {"base": "unified", "base_options": UNIFIED["options"], "density": 0.3}) == typed
    assert parse_options("dsl", typed.model_dump(mode="json")) == typed
    assert typed.model_dump(mode="json")["base"] == {"method": "unified", "options": parse_options("unified", UNIFIED["options"]).model_dump()}
    assert parse_options("optembed", {"base": "unified"}) == parse_options("optembed", {"base": {"method": "unified"}})
    assert parse_options("optembed", {}).base.method == "full"
    with pytest.raises(ValueError, match="give the base method's options as base.options, not base_options"):
        parse_options("dsl", {"base": UNIFIED, "base_options": {}})


def test_an_export_written_in_the_old_spelling_still_loads() -> None:
    method = build("dsl", {"base": UNIFIED}, 2.0).eval()
    exported = method.export()
    old = {k: v for k, v in exported.options.items() if k != "base"} | {"base": "unified", "base_options": UNIFIED["options"]}
    served = type(method).from_export(method.ctx, type(exported)(exported.name, old, exported.state))
    kjt = random_kjt("unified", 16, seed=3)
    with torch.no_grad():
        assert torch.equal(served(kjt).values(), method(kjt).values())


def test_recsys_methods_shows_the_ids_a_wrapper_reads_from_its_base(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    ids = dict(re.findall(r"^(\S+)\s+ids=(\S+)", capsys.readouterr().out, flags=re.MULTILINE))
    assert ids == {n: "base" if issubclass(get_method(n), WrappedMethod) else get_method(n).ids for n in available_methods()}
    assert ids["dsl"] == ids["optembed"] == "base" and ids["unified"] == "raw" and ids["full"] == "index"
    assert build_method("dsl", CTX, {"base": "unified"}).id_scheme == "raw" and build_method("dsl", CTX).id_scheme == "index"


def test_callers_use_declared_hooks_not_probes() -> None:
    """No ``getattr``/``hasattr`` probing for a declared hook, and no walking of ``.base`` outside the wrappers."""
    probe = re.compile(r"(?:getattr|hasattr)\([^,()]+,\s*[\"'](" + "|".join(HOOKS) + r")[\"']")
    walk = re.compile(r"(?<!embeddings)\.base\b")  # an attribute ``.base`` (not the module ``recsys.embeddings.base``)
    strings = re.compile(r"([\"']).*?\1")
    wrappers = {
        "recsys/embeddings/wrapped.py",
        "recsys/embeddings/dsl.py",
        "recsys/embeddings/optembed.py",
        "recsys/embeddings/optembed_export.py",
    }  # a wrapper's own base, and optembed's compact served form
    problems = []
    for folder in ("recsys", "training", "serving"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = strings.sub("", line.split("#")[0])
                if probe.search(line) or (rel not in wrappers and not code.lstrip().startswith(("from ", "import ")) and walk.search(code)):
                    problems.append(f"{rel}:{n}: {line.strip()}")
    assert not problems, "\n".join(problems)


def test_value_counts_follow_the_base() -> None:
    assert method_spec("dsl", {"base": "hybrid"}).uses_value_counts and not method_spec("dsl", {"base": "unified"}).uses_value_counts
    counts = {f.name: np.arange(max(f.cardinality - 2, 0), 0, -1) for f in CTX.features}
    ctx = MethodContext(CTX.features, CTX.embedding_dim).with_value_counts(counts)
    method = build_method("dsl", ctx, {"base": "hybrid", "base_compression": 2})
    assert method.base.ctx.value_counts is counts
