"""The package's layering (docs/architecture.md): no import cycle, imports only go down the layers, small modules.

Every ``import`` counts, also those inside functions; relative imports are resolved and ``import a.b`` counts as
``a.b``. A module's layer is that of its first name under ``recbole_gflowgr`` (``model.tiger`` -> ``model``).
"""
import ast
import os

import recbole_gflowgr

PACKAGE = os.path.dirname(recbole_gflowgr.__file__)
LAYERS = {  # first name under recbole_gflowgr -> layer; a module imports only its own layer or lower ones
    "": 0, "foundation": 0,  # errors, paths, utils, compat, the config schema ("": the package's __init__)
    "data": 1,  # registered datasets, conversion to RecBole's atomic files
    "tokenizer": 2, "new_items": 2,  # semantic IDs (the CM's item embeddings come in as an argument)
    "model": 3,  # trie, decoder steps, beam search, TIGER/LETTER, the collaborative scorer, get_model
    "trainer": 4,  # trainer mixins (checkpoints, schedule, resume, numerics, distributed), result rows
    "finetune": 5,  # one trainer per fine-tuning method
    "export": 6, "recommend": 6,  # serving
    "config": 7, "registry": 7, "quick_start": 7, "tokenize": 7,  # runtime: Config, get_trainer, run, the caches
    "experiments": 8, "leaderboard": 8, "analysis": 8, "recipe": 8, "diversity": 8, "rekey": 8,  # grids and tables
    "flow_target": 8, "curves": 8,  # diagnostics of a trained checkpoint; fine-tuning curves from the rows
    "artifacts": 8,  # the semantic IDs and checkpoints that the rows start from, committed beside them
}
ALLOWED = {  # (importer, imported): an import up the layers, with its reason
}
MAX_LINES = 400


def modules():
    """{dotted name under recbole_gflowgr ('' for the package): file path}."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), PACKAGE)[:-3].replace(os.sep, ".")
                out[rel[: -len("__init__")].rstrip(".") if rel.endswith("__init__") else rel] = os.path.join(folder, name)
    return out


def import_graph():
    """{module: set of this package's modules it imports}."""
    mods, graph = modules(), {}
    for name, path in mods.items():
        package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # from . import x / from ..a import b
                    parts = ["recbole_gflowgr"] + [p for p in package.split(".") if p]
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
                else:
                    base = node.module
                found |= {f"{base}.{a.name}" for a in node.names} | {base}
        ours = {f[len("recbole_gflowgr."):] if f != "recbole_gflowgr" else "" for f in found
                if f == "recbole_gflowgr" or f.startswith("recbole_gflowgr.")}
        graph[name] = {m for m in ours if m in mods and m != name}
    return graph


def layer(module):
    return LAYERS[module.split(".")[0]]


def test_every_module_has_a_layer():
    assert sorted({m.split(".")[0] for m in modules()} - set(LAYERS)) == []


def test_no_import_cycle():
    graph, cycles, state = import_graph(), [], {}

    def visit(node, path):  # depth-first; a grey node met again closes a cycle
        state[node] = "grey"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "grey":
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "black"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_imports_go_down_the_layers():
    up = sorted((a, b) for a, targets in import_graph().items() for b in targets
                if layer(b) > layer(a) and (a, b) not in ALLOWED)
    assert up == []


def over_max_lines(paths):
    """{name: line count} of the files in ``paths`` ({name: path}) longer than MAX_LINES."""
    return {name: n for name, path in paths.items() if (n := len(open(path).read().splitlines())) > MAX_LINES}


def test_no_module_over_400_lines():
    assert over_max_lines(modules()) == {}


def test_no_test_benchmark_or_script_over_400_lines():
    repo = os.path.dirname(PACKAGE)
    paths = [os.path.join(folder, name) for top in ("tests", "benchmarks")
             for folder, _, files in os.walk(os.path.join(repo, top)) for name in files if name.endswith(".py")]
    paths += [os.path.join(repo, name) for name in os.listdir(repo) if name.endswith(".py")]
    assert over_max_lines({os.path.relpath(p, repo): p for p in paths}) == {}


def test_trainer_stack_is_flat():
    """At most 3 classes between RecBole's ``Trainer`` and any method's trainer (in a single-process run)."""
    from recbole.trainer import Trainer
    from recbole.utils import ModelType

    from recbole_gflowgr.finetune import METHODS, get_finetune_trainer
    from recbole_gflowgr.registry import get_trainer

    classes = {name: get_finetune_trainer(name) for name in METHODS}
    classes["SASRec"] = get_trainer(ModelType.SEQUENTIAL, "SASRec")
    between = {name: cls.__mro__.index(Trainer) - 1 for name, cls in classes.items()}
    # GRTrainer -> TrainerMixin; GFlowGRTrainer -> GRTrainer -> ...; the baselines -> BaselineTrainer -> GRTrainer -> ...
    assert between == {"sft": 1, "sft-continued": 1, "gflowgr-tb": 2, "gflowgr-db": 2, "gflowgr-subtb": 2, "dpo": 3,
                       "s-dpo": 3, "sprec": 3, "ipa": 3, "ppo": 3, "grpo": 3, "SASRec": 1}
