"""Start-up checks of every config key, from ONE schema: the ``# (type) meaning`` comments of our yaml files.

Grammar of the comment after a top-level ``key: value`` line (the parser is strict: a malformed comment is a
ConfigError naming the yaml file and line)::

    # (TYPE) meaning                    TYPE = int | float | bool | str | list | dict
    # (int >= 1) meaning                one or two bounds: >= N, > N, <= N, < N, joined by ","  e.g. (float > 0, <= 1)
    # (float in (0, 1]) meaning         an interval, ( ) open and [ ] closed ends
    # (str: a | b | c) meaning          the allowed values
    # (list of int >= 1) meaning        a list whose every element is such a value (a bare value: a list of one)

A key whose default (in any of the schema files, or in RecBole's own overall.yaml) is ``~`` also accepts ``~``.
Keys of RecBole that we rely on but do not declare in our yamls are in :data:`RECBOLE_KEYS`, in the same grammar. :func:`validate` checks the types and
ranges, then the cross-key rules (:func:`check_rules`); the first bad value raises ConfigError
``<key>=<value>: <expected>; <fix>``, which the CLI prints as one ``error:`` line with exit status 2.
"""
import functools
import glob
import math
import os
import re
from dataclasses import dataclass, field

import yaml

from recbole_gflowgr.foundation.errors import ConfigError
from recbole_gflowgr.foundation.paths import PACKAGE_DIR

PACKAGE = PACKAGE_DIR
TYPES = ("int", "float", "bool", "str", "list", "dict")
# RecBole's keys this project relies on and does not declare in its own yamls (same grammar as the comments)
RECBOLE_KEYS = {
    "learning_rate": "float > 0",
    "train_batch_size": "int >= 1",
    "eval_batch_size": "int >= 1",
    "epochs": "int >= 0",
    "stopping_step": "int >= 1",
    "eval_step": "int >= 1",
    "MAX_ITEM_LIST_LENGTH": "int >= 1",
    "topk": "list of int >= 1",
    "seed": "int >= 0",
    "weight_decay": "float >= 0",
    "reproducibility": "bool",
    "metrics": "list",
    "valid_metric": "str",
    "learner": "str",
    "loss_type": "str",
    "checkpoint_dir": "str",
}

_KEY_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:(.*)$")
NO_DEFAULT = object()  # a key of RECBOLE_KEYS: no default of ours (and ~ not accepted unless a yaml says so)
_BOUND = re.compile(r"^(>=|>|<=|<)\s*(-?[0-9.eE+-]+|-?inf)$")
_INTERVAL = re.compile(r"^in\s*([\[(])\s*(-?[0-9.eE+-]+|-?inf)\s*,\s*(-?[0-9.eE+-]+|-?inf)\s*([\])])$")


@dataclass
class Spec:
    """One key's type, range / choices and meaning, as written in ``source`` (file:line)."""
    type: str
    text: str  # the part inside the parentheses, e.g. "int >= 1"
    meaning: str = ""
    source: str = ""
    bounds: list = field(default_factory=list)  # [(op, number)]
    choices: list = None
    item: "Spec" = None  # element spec of "list of ..."
    nullable: bool = False
    default: object = NO_DEFAULT

    def problem(self, value):
        """None if ``value`` fits, else what was expected (e.g. "an int >= 1")."""
        if value is None:
            return None if self.nullable else f"{_article(self.text)} (not ~)"
        if self.item is not None and not isinstance(value, (list, tuple)):  # RecBole reads --topk=10 as [10]
            value = [value]
        ok = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "bool": lambda v: isinstance(v, bool), "str": lambda v: isinstance(v, str),
              "list": lambda v: isinstance(v, (list, tuple)), "dict": lambda v: isinstance(v, dict)}[self.type]
        if not ok(value) or (self.type == "float" and math.isnan(value)):
            return _article(self.text)
        for op, bound in self.bounds:
            if not {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[op]:
                return _article(self.text)
        if self.choices is not None and value not in self.choices:
            return f"one of {' | '.join(self.choices)}"
        if self.item is not None:
            bad = [v for v in value if self.item.problem(v)]
            if bad:
                return f"{_article(self.text)} ({bad[0]!r} is not)"
        return None


def _article(text):
    return f"{'an' if text[:1] in 'aeiou' else 'a'} {text}"


def _number(text, where):
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{where}: '{text}' is not a number in the type comment; write e.g. (int >= 1)") from None


def parse_type(text, where):
    """The :class:`Spec` of a comment's parenthesised part, e.g. ``float in (0, 1]``; ``where`` names the line."""
    text = " ".join(text.split())
    fix = ("write the comment as `# (TYPE) meaning`, TYPE one of int | float | bool | str | list | dict, optionally "
           "with a range or choices, e.g. (int >= 1), (float in (0, 1]), (str: a | b), (list of int >= 1)")
    base, _, rest = text.partition(" ")
    if ":" in base:  # "str: a | b"
        base, _, more = text.partition(":")
        rest = ":" + more
    if base not in TYPES:
        raise ConfigError(f"{where}: malformed type comment '({text})'; {fix}")
    spec = Spec(base, text, source=where)
    rest = rest.strip()
    if not rest:
        return spec
    if rest.startswith(":"):
        choices = [c.strip() for c in rest[1:].split("|")]
        if base != "str" or not all(choices):
            raise ConfigError(f"{where}: malformed choices in '({text})'; choices are for str keys: (str: a | b | c)")
        spec.choices = choices
    elif rest.startswith("of "):
        if base != "list":
            raise ConfigError(f"{where}: 'of' in '({text})' is for lists only, e.g. (list of int >= 1)")
        spec.item = parse_type(rest[3:], where)
    elif rest.startswith("in"):
        m = _INTERVAL.match(rest)
        if not m or base not in ("int", "float"):
            raise ConfigError(f"{where}: malformed interval in '({text})'; write e.g. (float in (0, 1]) on int/float keys")
        spec.bounds = [(">=" if m.group(1) == "[" else ">", _number(m.group(2), where)),
                       ("<=" if m.group(4) == "]" else "<", _number(m.group(3), where))]
    else:
        for part in rest.split(","):
            m = _BOUND.match(part.strip())
            if not m or base not in ("int", "float"):
                raise ConfigError(f"{where}: malformed range '{part.strip()}' in '({text})'; write e.g. (int >= 1) "
                                  f"or (float > 0, <= 1) on int/float keys")
            spec.bounds.append((m.group(1), _number(m.group(2), where)))
    return spec


def split_comment(rest):
    """(type text, meaning) of a key line's remainder ``value  # (type) meaning``, or None without such a comment;
    brackets nest, so that ``(float in (0, 1])`` and a meaning with its own parentheses both parse."""
    hash_at = rest.find("#")
    if hash_at < 0:
        return None
    comment = rest[hash_at + 1:].lstrip()
    if not comment.startswith("("):
        return None
    depth = 0
    for i, ch in enumerate(comment):
        depth += 1 if ch in "([" else -1 if ch in ")]" else 0
        if depth == 0:
            return comment[1:i], comment[i + 1:].strip()
    return None


def recbole_yaml_loader():
    """The yaml loader RecBole's Config reads our files with (``1e-6`` is a float there, a str for safe_load)."""
    from recbole.config import Config as RecBoleConfig

    return RecBoleConfig._build_yaml_loader(None)


def parse_yaml(path, loader=None):
    """{key: Spec} of the top-level keys of one yaml file; every top-level key needs a well-formed comment.
    ``loader``: the yaml loader its reader uses (default: yaml.safe_load's)."""
    with open(path) as f:
        lines = f.read().splitlines()
    rel = os.path.relpath(path, os.path.dirname(PACKAGE))
    try:
        defaults = yaml.load("\n".join(lines), Loader=loader or yaml.SafeLoader) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{rel}: not valid YAML ({str(e).splitlines()[0]})") from None
    specs = {}
    for number, line in enumerate(lines, 1):
        m = _KEY_LINE.match(line)
        if not m:
            continue
        where = f"{rel}:{number}"
        comment = split_comment(m.group(2))
        if comment is None:
            raise ConfigError(f"{where}: key '{m.group(1)}' has no well-formed `# (type) meaning` comment; add one, "
                              f"e.g. `# (int >= 1) what it does`")
        spec = parse_type(comment[0], where)
        spec.meaning = comment[1]
        spec.default = defaults.get(m.group(1))
        specs[m.group(1)] = spec
    return specs


def schema_files():
    """The yamls whose comments declare the run config keys (grid files and tokenizer yamls are separate)."""
    from recbole_gflowgr.foundation.paths import REPO_PROPERTIES as PROPERTIES

    ours = os.path.join(PACKAGE, "properties")
    overall = os.path.join(PROPERTIES, "overall.yaml")
    models = sorted(glob.glob(os.path.join(ours, "model", "*.yaml")), key=lambda p: not p.endswith("TIGER.yaml"))
    # the files that define defaults first (their values are the examples in error messages), then the others
    return ([overall] + models + sorted(glob.glob(os.path.join(ours, "finetune", "*.yaml")))
            + sorted(glob.glob(os.path.join(PROPERTIES, "datasets", "*.yaml")))
            + [p for p in sorted(glob.glob(os.path.join(PROPERTIES, "*.yaml"))) if p != overall])


def merge(specs_by_file):
    """One {key: Spec}: a key declared in several files must have one type; the first range/choices given wins,
    and ``~`` as any file's default makes it nullable."""
    merged = {}
    for specs in specs_by_file:
        for key, spec in specs.items():
            old = merged.get(key)
            if old is None:
                merged[key] = spec
                spec.nullable = spec.default is None
                continue
            if old.type != spec.type:
                raise ConfigError(f"{spec.source}: key '{key}' is declared ({spec.text}) here but ({old.text}) in "
                                  f"{old.source}; give it one type")
            nullable = old.nullable or spec.default is None
            default = spec.default if old.default is NO_DEFAULT else old.default
            if not (old.bounds or old.choices or old.item) and (spec.bounds or spec.choices or spec.item):
                merged[key] = old = spec
            old.nullable, old.default, old.meaning = nullable, default, old.meaning or spec.meaning
    return merged


@functools.lru_cache(maxsize=None)
def schema():
    """{key: Spec} of every run config key: RecBole's table, then our yamls (the first range given wins)."""
    import recbole

    table = {k: parse_type(v, f"validation.RECBOLE_KEYS[{k!r}]") for k, v in RECBOLE_KEYS.items()}
    merged = merge([table] + [parse_yaml(p, recbole_yaml_loader()) for p in schema_files()])
    with open(os.path.join(os.path.dirname(recbole.__file__), "properties", "overall.yaml")) as f:
        recbole_defaults = yaml.load(f, Loader=recbole_yaml_loader()) or {}
    for key, value in recbole_defaults.items():  # ~ is RecBole's own "off" for these (e.g. clip_grad_norm)
        if value is None and key in merged:
            merged[key].nullable = True
    return merged


@functools.lru_cache(maxsize=None)
def tokenizer_schema(tokenizer):
    return merge([parse_yaml(os.path.join(PACKAGE, "properties", "tokenizer", f"{tokenizer}.yaml"))])


def _show(value):
    return "~" if value is None else str(value).replace(", ", ",").replace(": ", ":")


def check_value(key, value, spec, prefix="--"):
    expected = spec.problem(value)
    if expected:
        known = spec.default is not None and spec.default is not NO_DEFAULT
        default = f", e.g. {prefix}{key}={_show(spec.default)}" if known else ""
        raise ConfigError(f"{key}={_show(value)}: expected {expected}; fix it on the command line or in your "
                          f"config file{default} [{spec.meaning or spec.source}]")


def validate_keys(values, specs, prefix="--", given=None):
    """``given``: the keys the user set (files, dict, command line); a ``~`` of anyone else's defaults (RecBole's own
    yaml for its models, e.g. clip_grad_norm) is not checked."""
    for key, spec in specs.items():
        if key in values and (values[key] is not None or given is None or key in given):
            check_value(key, values[key], spec, prefix)


def validate(values, given=None, model=None):
    """Types, ranges and cross-key rules of a final config dict (a Config's ``final_config_dict``); ``model``: its
    model's name where the dict does not hold it yet."""
    validate_keys(values, schema(), given=given)
    check_rules(dict(values, model=model) if model else values)


def check_rules(values):
    """The rules between keys (types are checked already)."""
    from recbole_gflowgr import OUR_MODELS

    get = values.get
    topk = get("topk") or []
    topk = [topk] if isinstance(topk, int) else list(topk)
    metric = str(get("valid_metric") or "")
    name, _, k = metric.partition("@")
    if k and (not k.isdigit() or int(k) not in topk):
        raise ConfigError(f"valid_metric={metric}: its cut-off is not in topk={topk}; add {k} to topk or pick a "
                          f"valid_metric of these cut-offs (e.g. NDCG@{max(topk) if topk else 10})")
    metrics = [str(m).lower() for m in get("metrics") or []]
    if k and metrics and name.lower() not in metrics:
        raise ConfigError(f"valid_metric={metric}: {name} is not in metrics={get('metrics')}; add it to metrics")
    if get("model") not in OUR_MODELS:
        return
    if get("beam_size") is not None and topk and get("beam_size") < max(topk):
        raise ConfigError(f"beam_size={get('beam_size')}: smaller than max(topk)={max(topk)}, so items outside the "
                          f"beam would be unranked; set --beam_size={max(topk)} or more (or lower topk)")
    finetune = str(get("finetune") or "")
    if finetune.startswith("gflowgr"):
        terms = ("gflowgr_reward_aug", "gflowgr_reward_cm", "gflowgr_reward_tok")
        if all(k in values for k in terms) and not any(get(k) for k in terms):
            raise ConfigError("gflowgr_reward_aug=gflowgr_reward_cm=gflowgr_reward_tok=False: the reward would be "
                              "empty; switch at least one term on, e.g. --gflowgr_reward_aug=True")
        start, end = get("gflowgr_curriculum_start"), get("gflowgr_curriculum_end")
        if start is not None and end is not None and start > end:
            raise ConfigError(f"gflowgr_curriculum_start={start}: after gflowgr_curriculum_end={end}; the curriculum "
                              f"moves from easy to hard, so give start <= end")


def check_catalogue(values, n_items):
    """The rules that need the dataset's item count (``n_items`` real items, from the converted dataset)."""
    n_aug = values.get("gflowgr_n_aug")
    if str(values.get("finetune") or "").startswith("gflowgr") and n_aug is not None and n_aug > n_items - 1:
        raise ConfigError(f"gflowgr_n_aug={n_aug}: more augmented items than the catalogue of dataset "
                          f"'{values.get('dataset')}' has besides the positive ({n_items - 1}); set "
                          f"--gflowgr_n_aug={max(0, min(4, n_items - 1))} or less")
