"""Chain stages into one run: named steps, each a stage with its own config and overrides, run one after another as
subprocesses of the stage's command line, with their lineage in `pipeline_manifest.json`.

    uv run python self_model/pipeline.py --config config/pipeline/tiny.yaml [--dry-run] [--from STEP | --only STEP]
        [key=value ...]

A step may use an earlier step's output as `${steps.NAME.output}` (also inside a longer string, e.g.
`${steps.data.output}/train.jsonl`). A LoRA output used as a model is merged first; a verl output is its exported
actor. Running again skips the steps whose config and inputs are unchanged and resumes the one that stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from self_model.config import closest, import_class, load_config_file, locate, merge_layers
from self_model.errors import ConfigError, UserError, exit_on_user_error

REFERENCE = re.compile(r"\$\{steps\.([^.}]+)\.([^}]+)\}")
MANIFEST = "pipeline_manifest.json"
TOP_KEYS = ("output_dir", "seed", "steps")
STEP_KEYS = ("stage", "config", "overrides", "args", "models", "output_dir")
MODEL_KEYS = ("model_name_or_path", "rl.reward.reward_model", "rl.critic.model_name_or_path")  # need a full model
LARGE_FILE = 64 * 1024 * 1024  # fingerprinted by size and modification time instead of content


@dataclass(frozen=True)
class Stage:
    """How a stage runs: its module (`python -m`), and which of the step's keys it takes."""

    module: str
    kind: str  # "train" (a StageSpec and its YAML), "settings" (data_process, eval: a YAML), "tool" (flags only)
    spec: str | None = None  # `module:attribute` of the StageSpec
    fixed: dict[str, Any] = field(default_factory=dict)  # overrides the stage name implies (kto -> dpo.algorithm)


TRAINING = {
    "cpt": Stage("self_model.pretrain.train_pretrain", "train", "self_model.pretrain.train_pretrain:STAGE"),
    "sft": Stage("self_model.fine_tuning.train_finetune", "train", "self_model.fine_tuning.train_finetune:STAGE"),
    "rm": Stage("self_model.rlhf.train_rm", "train", "self_model.rlhf.train_rm:STAGE"),
    **{name: Stage("self_model.rlhf.train_dpo", "train", "self_model.rlhf.train_dpo:STAGE", {"dpo": {"algorithm": name}})
       for name in ("dpo", "kto", "orpo", "cpo", "simpo")},
    "grpo": Stage("self_model.rlhf.train_grpo", "train", "self_model.rlhf.train_grpo:STAGE"),
    "ppo": Stage("self_model.rlhf.train_ppo", "train", "self_model.rlhf.train_ppo:STAGE"),
}
STAGES = {
    "data_process": Stage("data_process.process_data", "settings"),
    "tokenizer": Stage("tokenizer.train_tokenizer", "tool"),
    **TRAINING,
    "merge": Stage("self_model.merge_lora", "tool"),
    "eval": Stage("self_model.evaluate", "settings"),
}


def say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- the pipeline file


@dataclass
class Step:
    name: str
    stage: str
    config: str | None
    overrides: dict
    args: dict
    models: list[str]
    output: Path  # the step's output directory
    line: int

    @property
    def spec(self) -> Stage:
        return STAGES[self.stage]

    def references(self) -> list[tuple[str, str]]:
        """(step, attribute) of every `${steps.X.attr}` in the step's values."""
        return [match.groups() for text in _strings([self.overrides, self.args, self.models])
                for match in REFERENCE.finditer(text)]


@dataclass
class Pipeline:
    source: str
    output_dir: Path
    seed: int | None
    steps: dict[str, Step]


def _strings(node: Any):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)


def _step_lines(text: str) -> dict[str, int]:
    """The line of each step name under `steps:` (and duplicate names, which YAML would silently merge)."""
    root = yaml.compose(text)
    lines: dict[str, int] = {}
    for key, value in getattr(root, "value", []) or []:
        if key.value == "steps" and isinstance(value, yaml.MappingNode):
            for step_key, _ in value.value:
                if step_key.value in lines:
                    raise ConfigError([f"steps.{step_key.value} (line {step_key.start_mark.line + 1}): a second step "
                                       f"named {step_key.value!r} (first on line {lines[step_key.value]})"], "")
                lines[step_key.value] = step_key.start_mark.line + 1
    return lines


def load_pipeline(path: str, overrides: list[str] = ()) -> Pipeline:
    """Read and check the pipeline file: its keys, each step's stage, references and output directories."""
    source = locate(path)
    if not Path(source).is_file():
        raise ConfigError([f"pipeline file not found: {path}"], path)
    text = Path(source).read_text(encoding="utf-8")
    try:
        lines = _step_lines(text)
        raw = OmegaConf.merge(OmegaConf.create(yaml.safe_load(text) or {}), OmegaConf.from_dotlist(list(overrides)))
    except ConfigError as err:
        raise ConfigError(err.problems, path) from None
    except Exception as err:  # yaml and OmegaConf errors
        raise ConfigError([f"not valid YAML: {err}"], path) from None
    data = OmegaConf.to_container(raw, resolve=False)
    problems = [f"{key}: unknown key{closest(key, TOP_KEYS)} (valid: {', '.join(TOP_KEYS)})" for key in data
                if key not in TOP_KEYS]
    if not isinstance(data.get("steps"), dict) or not data["steps"]:
        raise ConfigError([*problems, "steps: a mapping of step names to steps is required"], path)
    output_dir = Path(data.get("output_dir") or f"checkpoints/pipeline/{Path(path).stem}")
    steps: dict[str, Step] = {}
    for name, values in data["steps"].items():
        where = f"steps.{name} (line {lines.get(name, '?')})"
        if not isinstance(values, dict):
            problems.append(f"{where}: expected a mapping with `stage`")
            continue
        problems += [f"{where}: unknown key {key!r}{closest(key, STEP_KEYS)} (valid: {', '.join(STEP_KEYS)})"
                     for key in values if key not in STEP_KEYS]
        stage = values.get("stage")
        if stage not in STAGES:
            problems.append(f"{where}: unknown stage {stage!r}{closest(str(stage), STAGES)} "
                            f"(valid: {', '.join(STAGES)})")
            continue
        spec = STAGES[stage]
        if spec.kind != "tool" and not values.get("config"):
            problems.append(f"{where}: stage {stage} needs `config` (its YAML file)")
        if spec.kind == "tool" and values.get("config"):
            problems.append(f"{where}: stage {stage} takes command-line flags in `args`, not a `config`")
        if spec.kind != "tool" and values.get("args"):
            problems.append(f"{where}: stage {stage} reads its YAML: put its keys in `overrides`, not `args`")
        if values.get("models") and stage != "eval":
            problems.append(f"{where}: `models` is for eval steps")
        if values.get("config") and not Path(locate(values["config"])).is_file():
            problems.append(f"{where}: config file not found: {values['config']}")
        for key in ("overrides", "args"):
            if not isinstance(values.get(key) or {}, dict):
                problems.append(f"{where}: `{key}` must be a mapping")
        steps[name] = Step(name, stage, locate(values.get("config")), values.get("overrides") or {},
                           values.get("args") or {}, list(values.get("models") or []),
                           Path(values.get("output_dir") or output_dir / name), lines.get(name, 0))
    problems += _graph_problems(steps)
    seen: dict[Path, str] = {}
    for step in steps.values():
        owner = seen.setdefault(step.output.resolve(), step.name)
        if owner != step.name:
            problems.append(f"steps.{step.name} (line {step.line}): writes to {step.output}, as step {owner} does; "
                            "give one of them another output_dir")
        if "output_dir" in step.overrides.get("training_args", {}) or "output_dir" in step.overrides or "output_dir" in step.args:
            problems.append(f"steps.{step.name} (line {step.line}): the pipeline sets each step's output directory: "
                            "use the step's `output_dir` key")
    if problems:
        raise ConfigError(problems, path)
    return Pipeline(path, output_dir, data.get("seed"), steps)


def _graph_problems(steps: dict[str, Step]) -> list[str]:
    """References to unknown or later steps, to attributes other than `output`, and cycles."""
    problems, order = [], list(steps)
    for step in steps.values():
        for target, attribute in step.references():
            where = f"steps.{step.name} (line {step.line}): ${{steps.{target}.{attribute}}}"
            if attribute != "output":
                problems.append(f"{where}: a step offers `output` only")
            elif target not in steps:
                problems.append(f"{where}: no step named {target!r}{closest(target, order)}")
    edges = {name: {t for t, _ in step.references() if t in steps} for name, step in steps.items()}
    cycle = _find_cycle(edges)
    if cycle:
        problems.append(f"steps: a cycle of references: {' -> '.join(cycle)}")
        return problems
    for step in steps.values():
        for target in sorted(edges[step.name]):
            if order.index(target) > order.index(step.name):
                problems.append(f"steps.{step.name} (line {step.line}): uses step {target}, which comes later; "
                                "move it before this step")
    return problems


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                return [*path[path.index(target):], target] if target in path else [node, target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[node] = "done"
        return None

    for node in edges:
        if node not in state and (found := visit(node, [node])):
            return found
    return None


# ---------------------------------------------------------------- resolving a step


def _nested_get(node: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _substitute(node: Any, outputs: dict[str, str]) -> Any:
    if isinstance(node, str):
        return REFERENCE.sub(lambda m: outputs[m.group(1)], node)
    if isinstance(node, dict):
        return {k: _substitute(v, outputs) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, outputs) for v in node]
    return node


def step_values(pipeline: Pipeline, step: Step, outputs: dict[str, str]) -> dict:
    """The step's overrides as the stage gets them: references replaced, the pipeline's own keys added (output
    directory, seed, the tokenizer carried forward with the model)."""
    values = step.overrides
    if step.spec.kind == "train":
        model = values.get("model_name_or_path")
        if isinstance(model, str) and REFERENCE.fullmatch(model):  # an earlier step's model: its tokenizer too
            values = _deep_merge({"tokenizer_name_or_path": model, "model": {"init_from_config": None}}, values)
        seed = {"seed": pipeline.seed} if pipeline.seed is not None else {}
        values = _deep_merge(values, {"training_args": {**seed, **values.get("training_args", {}),
                                                        "output_dir": str(step.output)}})
        values = _deep_merge(values, step.spec.fixed)
    elif step.stage == "data_process":
        values = _deep_merge(values, {"output_dir": str(step.output), "subdir": ""})
    return _substitute(values, outputs)


def write_step_config(pipeline: Pipeline, step: Step, outputs: dict[str, str], directory: Path, **extra) -> Path:
    """The step's YAML: its config file as `base:`, then the overrides (what the stage's command line reads)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{step.name}.yaml"
    body = {"base": str(Path(step.config).resolve()), **_deep_merge(step_values(pipeline, step, outputs), extra)}
    path.write_text(f"# step {step.name} of {pipeline.source} (written by self_model/pipeline.py)\n"
                    + yaml.safe_dump(body, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _flags(args: dict) -> list[str]:
    argv = []
    for key, value in args.items():
        if value is False or value is None:
            continue
        argv.append(f"--{key}")
        if value is not True:
            argv += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return argv


def step_argv(pipeline: Pipeline, step: Step, outputs: dict[str, str], config_dir: Path, **extra) -> list[str]:
    """The stage's command-line arguments."""
    if step.spec.kind == "tool":
        return [*_flags(_substitute(step.args, outputs)), "--output_dir", str(step.output)]
    argv = ["--config", str(write_step_config(pipeline, step, outputs, config_dir, **extra))]
    if step.stage == "eval":
        for model in _substitute(step.models, outputs):
            argv += ["--model", model]
        argv += ["--output_dir", str(step.output)]
    return argv


def check_step(step: Step, argv: list[str], check_files: bool = True) -> Any:
    """Validate the step in this process as its stage would (no torch, no model); returns its resolved config."""
    if step.spec.kind == "train":
        return load_config_file(import_class(step.spec.spec), argv[1], check_files=check_files).resolved
    module = importlib.import_module(step.spec.module)
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            if step.stage == "data_process":
                args, flags = module.parse_args(argv)
            elif step.stage == "tokenizer":
                args = module.parse_args(argv)
            else:
                args = module.build_parser().parse_intermixed_args(argv)
    except SystemExit:
        errors = [line for line in stderr.getvalue().splitlines() if "error:" in line]
        raise ConfigError([f"{step.stage} {' '.join(argv)}: {(errors or [stderr.getvalue().strip()])[-1]}"],
                          step.name) from None
    if step.stage == "eval":
        return module.load_eval_config(args.config, args.overrides, check_files=check_files)[1]
    if step.stage == "data_process":
        from data_process.settings import load_process_settings

        load_process_settings(args.config, args.overrides, flags, check_files=check_files)
        return merge_layers(args.config, args.overrides, flags).resolved
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


# ---------------------------------------------------------------- outputs, fingerprints, the manifest


def model_output(step: Step, resolved: dict) -> Path:
    """Where the step's model is: the exported actor for verl, the merged reward model for a LoRA RM."""
    if step.stage in ("grpo", "ppo") and _nested_get(resolved, "rl.backend") == "verl":
        return step.output / "hf_model"
    if step.stage == "rm" and _nested_get(resolved, "peft.enabled"):
        return step.output / "merged"
    return step.output


def needs_merge(pipeline: Pipeline, step: Step, resolved: dict) -> bool:
    """A LoRA output that a later step uses as the model it trains from (eval reads adapters as they are)."""
    if step.stage not in TRAINING or step.stage == "rm" or not _nested_get(resolved, "peft.enabled"):
        return False
    if step.stage in ("grpo", "ppo") and _nested_get(resolved, "rl.backend") == "verl":
        return False
    ref = f"${{steps.{step.name}.output}}"
    return any(_nested_get(other.overrides, key) == ref for other in pipeline.steps.values() for key in MODEL_KEYS)


def fingerprint(path: Path) -> str:
    """Content hash of a file or a directory's files (large files: size and modification time)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        stat = file.stat()
        if stat.st_size > LARGE_FILE:
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def input_fingerprints(resolved: Any, own_output: Path, produced: set[str]) -> dict[str, str]:
    """Every local file or folder the step's resolved config names (not its own output, not an earlier step's)."""
    found = {}
    for text in _strings(resolved):
        if "/" not in text and not text.endswith((".json", ".jsonl", ".txt", ".yaml", ".py", ".parquet", ".csv")):
            continue
        name = locate(re.sub(r"(#\d+|:\w+)$", "", text))
        path = Path(name)
        if not path.exists() or path.resolve().is_relative_to(own_output.resolve()) or any(
                path.resolve().is_relative_to(p) for p in produced):
            continue
        found[str(path)] = fingerprint(path)
    return found


def step_key(step: Step, resolved: Any, inputs: dict[str, str], upstream: dict[str, str]) -> str:
    body = json.dumps({"stage": step.stage, "config": resolved, "inputs": inputs, "upstream": upstream},
                      sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def read_metrics(step: Step, model_dir: Path) -> dict:
    """The step's final metrics: a stage's manifest.json `metrics`, or an eval step's results."""
    eval_file = step.output / "eval.json"
    if step.stage == "eval" and eval_file.is_file():
        return json.loads(eval_file.read_text(encoding="utf-8"))["results"]
    for folder in (step.output, model_dir):
        manifest = folder / "manifest.json"
        if manifest.is_file():
            return json.loads(manifest.read_text(encoding="utf-8")).get("metrics", {})
    return {}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class Manifest:
    """pipeline_manifest.json: per step its resolved config, inputs with fingerprints, output, status, times,
    metrics; rewritten after every change so that a killed run leaves it readable."""

    def __init__(self, pipeline: Pipeline):
        self.path = pipeline.output_dir / MANIFEST
        previous = json.loads(self.path.read_text(encoding="utf-8")) if self.path.is_file() else {}
        self.previous: dict[str, dict] = previous.get("steps", {})
        self.data = {"pipeline": str(pipeline.source), "started": now(), "steps": dict(self.previous)}

    def record(self, name: str, **values) -> None:
        self.data["steps"][name] = {**self.data["steps"].get(name, {}), **values}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- running


@dataclass
class Planned:
    """A step resolved against the outputs of the steps before it."""

    step: Step
    argv: list[str]
    resolved: Any
    key: str
    inputs: dict[str, str]
    model_dir: Path
    merge: bool
    outputs: dict[str, str]  # the model folder of every step up to this one


def plan(pipeline: Pipeline, config_dir: Path, placeholders: Path | None = None) -> list[Planned]:
    """Validate every step up front, in order. An earlier step's output that does not exist yet is stood in for by an
    empty folder under `placeholders` (its shape is checked, not its contents)."""
    outputs: dict[str, str] = {}
    keys: dict[str, str] = {}
    produced: set[str] = set()
    planned, problems = [], []
    for step in pipeline.steps.values():
        stand_ins = {}
        for target, _ in step.references():
            stand_ins[target] = outputs[target]
            if placeholders is not None and not Path(outputs[target]).exists():
                stand_ins[target] = str(placeholders / target)
                Path(stand_ins[target]).mkdir(parents=True, exist_ok=True)
        try:
            argv = step_argv(pipeline, step, stand_ins, config_dir)
            resolved = check_step(step, argv)
        except ConfigError as err:
            problems += [f"steps.{step.name} (line {step.line}): {p}" for p in err.problems]
            outputs[step.name] = str(step.output)
            keys[step.name] = ""
            continue
        resolved = _substitute_back(resolved, stand_ins, outputs)
        upstream = {t: keys[t] for t, _ in step.references()}
        inputs = input_fingerprints(resolved, step.output, produced)
        key = step_key(step, resolved, inputs, upstream)
        model_dir = model_output(step, resolved if isinstance(resolved, dict) else {})
        merge = needs_merge(pipeline, step, resolved if isinstance(resolved, dict) else {})
        if merge:
            model_dir = step.output.parent / f"{step.output.name}_merged"
        outputs[step.name] = str(model_dir)
        keys[step.name] = key
        produced.add(str(step.output.resolve()))
        produced.add(str(model_dir.resolve()))
        planned.append(Planned(step, step_argv(pipeline, step, outputs, config_dir), resolved, key, inputs, model_dir,
                               merge, dict(outputs)))
    if problems:
        raise ConfigError(problems, pipeline.source)
    return planned


def _substitute_back(resolved: Any, stand_ins: dict[str, str], outputs: dict[str, str]) -> Any:
    """The resolved config with stand-in folders replaced by the real outputs."""
    pairs = [(stand_ins[name], outputs[name]) for name in stand_ins if stand_ins[name] != outputs[name]]

    def swap(node):
        if isinstance(node, str):
            for old, new in pairs:
                node = node.replace(old, new)
            return node
        if isinstance(node, dict):
            return {k: swap(v) for k, v in node.items()}
        if isinstance(node, list):
            return [swap(v) for v in node]
        return node

    return swap(resolved)


def run_command(module: str, argv: list[str], log: Path) -> int:
    """Run a stage's command line, its output shown and kept in `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w", encoding="utf-8") as out:
        process = subprocess.Popen([sys.executable, "-m", module, *argv], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, env=env)
        for line in process.stdout:
            out.write(line)
            sys.stdout.write(line)
        return process.wait()


def can_resume(item: Planned) -> bool:
    """A training step that stopped after saving a checkpoint, on a backend that resumes."""
    if item.step.stage not in TRAINING or item.step.stage == "ppo" or _nested_get(item.resolved, "rl.backend") == "verl":
        return False
    return any(p.name.startswith("checkpoint-") for p in item.step.output.glob("checkpoint-*"))


def singled_out(items: list[Planned], start: str | None, only: str | None) -> set[str]:
    """The steps `--from STEP` (it and every later one) or `--only STEP` names; none without either."""
    names = [item.step.name for item in items]
    return set(names[names.index(start):]) if start else {only} if only else set()


def execute(pipeline: Pipeline, items: list[Planned], manifest: Manifest, config_dir: Path, start: str | None,
            only: str | None) -> None:
    forced = singled_out(items, start, only)
    ran: set[str] = set()  # a step after one that ran runs too: its input changed
    for item in items:
        step, before = item.step, manifest.previous.get(item.step.name, {})
        if only and step.name != only:
            continue
        done_before = before.get("status") == "done" and item.model_dir.exists()
        fresh_inputs = any(target in ran for target, _ in step.references())
        if step.name not in forced and done_before and before.get("key") == item.key and not fresh_inputs:
            say(f"[pipeline] {step.name}: unchanged since {before.get('end')}, skipped")
            manifest.record(step.name, model=str(item.model_dir))  # e.g. an adapter no later step merges any more
            continue
        if start and step.name not in forced:
            if not done_before:
                raise UserError(f"--from {start}: step {step.name} before it has not finished; run without --from")
            say(f"[pipeline] {step.name}: kept (--from {start}){'; its config changed since' if before.get('key') != item.key else ''}")
            continue
        for target, _ in step.references():
            if not Path(manifest.data["steps"].get(target, {}).get("model", "")).exists():
                raise UserError(f"step {step.name} needs the output of step {target}, which has not run: run the "
                                "pipeline without --only")
        resume = step.name not in forced and not fresh_inputs and before.get("key") == item.key and before.get(
            "status") in ("running", "failed") and can_resume(item)
        argv = item.argv
        if step.spec.kind == "train":
            argv = step_argv(pipeline, step, item.outputs, config_dir, resume=resume, overwrite=not resume)
        elif step.stage in ("merge", "data_process"):
            argv = [*argv, "--overwrite"]
        say(f"[pipeline] {step.name} ({step.stage}){' resuming from its last checkpoint' if resume else ''}: "
            f"python -m {step.spec.module} {' '.join(argv)}")
        manifest.record(step.name, stage=step.stage, status="running", key=item.key, config=item.resolved,
                        inputs=item.inputs, output=str(step.output), model=str(item.model_dir), start=now(),
                        end=None, command=[step.spec.module, *argv])
        started = time.time()
        code = run_command(step.spec.module, argv, pipeline.output_dir / "logs" / f"{step.name}.log")
        if code == 0 and item.merge:
            say(f"[pipeline] {step.name}: merging the adapter into {item.model_dir} for the steps after it")
            code = run_command("self_model.merge_lora", ["--adapter", str(step.output), "--output_dir",
                                                         str(item.model_dir), "--overwrite"],
                               pipeline.output_dir / "logs" / f"{step.name}_merge.log")
        if code != 0:
            manifest.record(step.name, status="failed", end=now(), seconds=round(time.time() - started, 1))
            raise UserError(f"step {step.name} failed (exit code {code}); its log: "
                            f"{pipeline.output_dir / 'logs' / (step.name + '.log')}. Fix it and run the pipeline "
                            "again: the steps before it are kept")
        manifest.record(step.name, status="done", end=now(), seconds=round(time.time() - started, 1),
                        metrics=read_metrics(step, item.model_dir))
        ran.add(step.name)


def dry_run(pipeline: Pipeline, items: list[Planned]) -> None:
    """Every step was validated by `plan`; a training step whose inputs exist also builds its data (`--dry-run`)."""
    for item in items:
        step = item.step
        pending = sorted({t for t, _ in step.references() if not Path(item.outputs[t]).exists()})
        if step.spec.kind != "train" or pending:
            detail = f"checked for shape ({', '.join(pending)} not run yet)" if pending else "checked"
            say(f"[dry run] {step.name} ({step.stage}): config {detail}")
            continue
        code = run_command(step.spec.module, [*item.argv, "--dry-run"],
                           pipeline.output_dir / "logs" / f"{step.name}_dry_run.log")
        if code != 0:
            raise UserError(f"[dry run] step {step.name}: its stage's --dry-run failed (exit code {code}), see above")
        say(f"[dry run] {step.name} ({step.stage}): config and data checked by its --dry-run")
    say(f"[dry run] {len(items)} step{'' if len(items) == 1 else 's'} valid; nothing was trained")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run a pipeline of stages from a YAML file (config/pipeline/).",
                                     epilog="Overrides: key=value, e.g. seed=1 output_dir=checkpoints/pipeline/seed1 "
                                            "steps.sft.overrides.training_args.max_steps=50")
    parser.add_argument("--config", required=True, help="pipeline YAML file")
    parser.add_argument("--dry-run", action="store_true", help="validate every step, or those --from/--only name (and the data "
                        "where it can); run none")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--from", dest="start", metavar="STEP", help="run STEP and every step after it again")
    group.add_argument("--only", metavar="STEP", help="run STEP only (the steps it uses must have run)")
    parser.add_argument("overrides", nargs="*", help="key=value")
    return parser


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    pipeline = load_pipeline(args.config, args.overrides)
    for name in (args.start, args.only):
        if name and name not in pipeline.steps:
            raise UserError(f"no step named {name!r}{closest(name, list(pipeline.steps))} (steps: {', '.join(pipeline.steps)})")
    config_dir = pipeline.output_dir / "configs"
    with tempfile.TemporaryDirectory(prefix="pipeline_inputs_") as placeholders:
        items = plan(pipeline, config_dir, Path(placeholders))
    say(f"[pipeline] {len(items)} steps checked: {', '.join(i.step.name for i in items)}")
    if args.dry_run:
        chosen = singled_out(items, args.start, args.only)
        dry_run(pipeline, [item for item in items if not chosen or item.step.name in chosen])
        return 0
    manifest = Manifest(pipeline)
    execute(pipeline, items, manifest, config_dir, args.start, args.only)
    manifest.data["steps"] = {name: manifest.data["steps"][name] for name in pipeline.steps if name in manifest.data["steps"]}
    from self_model.report import write_pipeline_report

    report = write_pipeline_report(pipeline.output_dir, manifest.data)
    say(f"[pipeline] done: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
