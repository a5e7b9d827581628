"""The bad-input corpus (tests/bad_inputs/): every broken config and data file ends in its exact message, exit code 2
and no traceback, through the entry point the command line uses (in this process; a few as real subprocesses)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from data_process.process_data import main as process_data_main
from self_model.fine_tuning.train_finetune import main as sft_main
from self_model.pretrain.train_pretrain import main as pretrain_main
from self_model.rlhf.train_dpo import main as dpo_main
from self_model.rlhf.train_grpo import main as grpo_main
from self_model.rlhf.train_ppo import main as ppo_main
from self_model.rlhf.train_rm import main as rm_main
from tests.helpers import REPO, run_script
from tokenizer.train_tokenizer import main as train_tokenizer_main

CORPUS = Path(__file__).parent / "bad_inputs"
EXPECTED = yaml.safe_load((CORPUS / "expected.yaml").read_text(encoding="utf-8"))
DATA_TOOLS = json.loads((CORPUS / "data_tools.json").read_text(encoding="utf-8"))
STAGES = {  # tool -> (entry point, script, the demo config a data case is trained with)
    "sft": (sft_main, "self_model/fine_tuning/train_finetune.py", "sft_tiny.yaml"),
    "cpt": (pretrain_main, "self_model/pretrain/train_pretrain.py", "pretrain_tiny.yaml"),
    "rm": (rm_main, "self_model/rlhf/train_rm.py", "rm_tiny.yaml"),
    "dpo": (dpo_main, "self_model/rlhf/train_dpo.py", "dpo_tiny.yaml"),
    "grpo": (grpo_main, "self_model/rlhf/train_grpo.py", "grpo_tiny.yaml"),
    "ppo": (ppo_main, "self_model/rlhf/train_ppo.py", "grpo_tiny.yaml"),
}
TOOLS = {"data_process": (process_data_main, "data_process/process_data.py"),
         "train_tokenizer": (train_tokenizer_main, "tokenizer/train_tokenizer.py")}
CASES = sorted(EXPECTED)
SUBPROCESS_CASES = ["configs/sft_unknown_peft_key.yaml"]  # the rest run in this process, through the same main


def tool_of(case: str) -> str:
    if case.startswith("data/"):
        return DATA_TOOLS[Path(case).name]
    return re.match(r"# tool: (\w+)", (CORPUS / case).read_text(encoding="utf-8"))[1]


def command(case: str, out: Path) -> tuple[object, str, list[str]]:
    """(entry point, script, argv) that feed this case to its tool as a user would."""
    path, tool = str(CORPUS / case), tool_of(case)
    if tool in TOOLS:
        main, script = TOOLS[tool]
        argv = ["--input", path, "--output_dir", str(out)]
        if case.startswith("configs/"):
            argv = ["--config", path, "--output_dir", str(out)]
        return main, script, argv
    main, script, demo = STAGES[tool]
    if case.startswith("configs/"):
        return main, script, ["--config", path, "--dry-run", f"training_args.output_dir={out}"]
    return main, script, ["--config", str(REPO / "config" / "examples" / demo), f"data.train_file={path}", "--dry-run",
                          f"training_args.output_dir={out}"]


def normalized(message: str, out: Path) -> str:
    return message.replace(str(CORPUS), "{corpus}").replace(str(out), "{out}").replace(str(REPO), "{repo}").strip()


def test_the_corpus_is_complete():
    files = {str(p.relative_to(CORPUS)) for folder in ("configs", "data") for p in (CORPUS / folder).iterdir()}
    assert files == set(EXPECTED), files ^ set(EXPECTED)
    assert sum(case.startswith("configs/") for case in CASES) >= 30
    assert sum(case.startswith("data/") for case in CASES) >= 20


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_its_message_and_exit_code_2(case, tmp_path, capsys):
    main, _, argv = command(case, tmp_path / "out")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 2, stderr
    assert "Traceback" not in stderr
    assert normalized(stderr, tmp_path / "out") == EXPECTED[case].strip()


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_bad_input_from_the_command_line(case, tmp_path):
    _, script, argv = command(case, tmp_path / "out")
    result = run_script(script, *argv)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert normalized(result.stderr, tmp_path / "out").endswith(EXPECTED[case].strip())


if __name__ == "__main__":  # prints every case's message, to review when a case is added
    import contextlib
    import io
    import tempfile

    for case in sorted(str(p.relative_to(CORPUS)) for folder in ("configs", "data") for p in (CORPUS / folder).iterdir()):
        out = Path(tempfile.mkdtemp()) / "out"
        main, _, argv = command(case, out)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                main(argv)
                code = 0
            except SystemExit as exit_:
                code = exit_.code
            except Exception as exc:
                code = f"{type(exc).__name__}: {exc}"
        print(yaml.safe_dump({case: normalized(err.getvalue(), out)}, allow_unicode=True, width=1000), f"# exit {code}",
              file=sys.stdout)
