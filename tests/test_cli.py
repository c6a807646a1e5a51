"""The command line: key=value overrides are taken wherever they stand among a command's options; how a
process ends."""

import argparse
import re
import subprocess
import sys

import pytest

from earful.cli import parse


@pytest.mark.parametrize("argv", [
    ["study", "run", "s.yaml", "--out", "d", "seeds=[1,2]", "jobs=1"],
    ["study", "run", "--out", "d", "s.yaml", "seeds=[1,2]", "jobs=1"],
    ["study", "run", "s.yaml", "seeds=[1,2]", "--out", "d", "jobs=1"],
])
def test_overrides_before_or_after_options(argv):
    args = parse(argv)
    assert args.study == "s.yaml" and args.out == "d"
    assert args.overrides == ["seeds=[1,2]", "jobs=1"]


@pytest.mark.parametrize("argv", [
    ["probe", "CKPT", "--suite", "mini-superb", "--out", "d", "--seeds", "0", "1", "2", "pr.layer=6", "ic.lr=0.1"],
    ["probe", "CKPT", "pr.layer=6", "--out", "d", "--seeds", "0", "1", "2", "ic.lr=0.1"],
    ["probe", "CKPT", "pr.layer=6", "--seeds", "0", "1", "2", "--out", "d", "ic.lr=0.1"],
])
def test_probe_overrides_after_its_seeds(argv):
    """README's `earful probe CKPT ... --seeds 0 1 2 pr.layer=6` stopped at 'argument --seeds: invalid int value:
    'pr.layer=6'' (argparse gives --seeds every word up to the next option): an override after the seeds is one
    too."""
    args = parse(argv)
    assert args.seeds == [0, 1, 2] and args.overrides == ["pr.layer=6", "ic.lr=0.1"]


@pytest.mark.parametrize("seeds", [["0", "x"], ["pr.layer=6"]])
def test_probe_seeds_that_are_none_are_refused(seeds):
    with pytest.raises(SystemExit):
        parse(["probe", "CKPT", "--out", "d", "--seeds", *seeds])


def test_pretrain_overrides_after_flags():
    from earful.config import config_and_overrides

    args = parse(["pretrain", "c.yaml", "--out", "d", "--resume", "max_steps=8"])
    assert args.resume and config_and_overrides(args.overrides, args.config) == ("c.yaml", ["max_steps=8"])


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_both_training_commands_take_a_config_either_way(command, tmp_path, caplog):
    """`earful pretrain` took its config as a first word only (`--config` was unrecognized), `earful finetune` by
    --config only (a first word was 'not of the form key=value'). Both take both; two configs are refused."""
    import logging

    from earful.cli import main
    from earful.config import config_and_overrides

    preset = f"{command}-demo"
    for argv in ([preset, "max_steps=3"], ["--config", preset, "max_steps=3"], ["max_steps=3", "--config", preset]):
        args = parse([command, *argv, "--out", "d"])
        assert config_and_overrides(args.overrides, args.config) == (preset, ["max_steps=3"]), argv
    args = parse([command, "max_steps=3", "--out", "d"])
    assert config_and_overrides(args.overrides, args.config) == (None, ["max_steps=3"])  # the defaults
    with caplog.at_level(logging.ERROR):
        assert main([command, preset, "--config", preset, "--out", str(tmp_path / "run")]) == 2
    assert f"two configs: --config {preset} and {preset}; give one of them" in caplog.text


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_a_config_path_holding_an_equals_sign_is_said_to_be_read_as_an_override(command, tmp_path, monkeypatch,
                                                                                caplog):
    """`earful pretrain sweep/lr=1e-3/config.yaml` said only "unknown key(s) ['sweep/lr']": a word holding '=' is an
    override. The refusal now says the word was read as one, and that --config takes such a path (which works);
    a word that names an existing file, whatever its key, is said so too."""
    import logging

    from earful.cli import main
    from earful.config import save_yaml
    from earful.finetune.config import load_finetune_config
    from earful.pretrain.config import load_pretrain_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep" / "lr=1e-3").mkdir(parents=True)
    path = "sweep/lr=1e-3/config.yaml"
    loader = load_pretrain_config if command == "pretrain" else load_finetune_config
    save_yaml(loader(f"{command}-demo", ["max_steps=4"]), path)
    (tmp_path / "max_steps=5").write_text("max_steps: 5\n")  # a file named as an override
    for word in (path, "max_steps=5"):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main([command, word, "--init", "scratch", "--out", str(tmp_path / "run"),
                         *(["bogus=1"] if word == "max_steps=5" else [])]) == 2
        assert re.search(rf"{re.escape(repr(word))}: read as a key=value override .*give a config path holding '=' "
                         r"with --config PATH", caplog.text), caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):  # an error with no such word is as it was
        assert main([command, "bogus=1", "--out", str(tmp_path / "run")]) == 2
    assert "unknown key(s) ['bogus']" in caplog.text and "read as a key=value override" not in caplog.text
    assert loader(path, []).max_steps == 4  # what --config PATH reads


@pytest.mark.parametrize("extra", ["--bogus", "stray"])
def test_unknown_words_are_refused(extra, capsys):
    with pytest.raises(SystemExit):
        parse(["study", "run", "s.yaml", "--out", "d", extra])
    assert "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["prepare", "src", "out"], ["shard", "m.jsonl", "out"],
                                  ["synth", "out", "--hours", "1"]])
@pytest.mark.parametrize("workers", ["0", "-1"])
def test_a_workers_count_below_one_is_refused(argv, workers, capsys):
    """`--workers 0` or `-1` (joblib's "all cores") ran in one process without a word; now refused, as argparse
    refuses a count that is not a number."""
    assert parse([*argv, "--workers", "3"]).workers == 3
    with pytest.raises(SystemExit):
        parse([*argv, "--workers", workers])
    assert f"expected a number of processes >= 1, got '{workers}'" in capsys.readouterr().err


def test_the_top_level_help_tells_users_what_earful_is(capsys):
    """`earful --help` printed the module's docstring, for developers ("Each concern owns its sub-commands in
    ``earful/<concern>/commands.py`` ..."); now what earful does and its main commands."""
    with pytest.raises(SystemExit) as stop:
        parse(["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0
    assert "wav2vec 2.0 self-supervised speech pre-training" in out
    assert all(f"  {c}" in out for c in ("pretrain", "finetune", "evaluate, transcribe", "study"))
    assert "commands.py" not in out and "register(subparsers)" not in out


def test_version_is_the_running_codes_and_the_packages(capsys, monkeypatch):
    """`earful --version` did not exist ("the following arguments are required: command"); it says the version of
    the code that runs (a checkout run by PYTHONPATH beside an installed copy said the installed copy's), which the
    package's metadata takes from the same place (pyproject.toml: dynamic, earful.__version__)."""
    import tomllib
    from pathlib import Path

    import earful

    monkeypatch.setattr(earful, "__version__", "9.9.9")  # what another checkout's code would say
    with pytest.raises(SystemExit) as stop:
        parse(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == "earful 9.9.9\n"
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "earful.__version__"}


@pytest.mark.parametrize(("argv", "verbose"), [
    (["evaluate", "c", "m.jsonl", "--out", "o", "-v"], True),
    (["evaluate", "c", "m.jsonl", "-v", "--out", "o"], True),
    (["-v", "evaluate", "c", "m.jsonl", "--out", "o"], True),
    (["evaluate", "c", "m.jsonl", "--out", "o"], False),
    (["lm", "build", "t.txt", "--out", "x", "--verbose"], True),
    (["-v", "study", "run", "s.yaml", "--out", "d"], True),
    (["study", "run", "s.yaml", "--out", "d"], False),
])  # fmt: skip
def test_verbose_before_or_after_the_command(argv, verbose):
    """`earful evaluate ... -v` was refused ("unrecognized arguments: -v"): -v was the top level's alone. Every
    command (and sub-command) takes it now, and a command's own default does not undo `earful -v COMMAND`."""
    assert parse(argv).verbose is verbose


def test_verbose_after_a_command_keeps_its_overrides():
    args = parse(["study", "run", "s.yaml", "--out", "d", "-v", "seeds=[1,2]"])
    assert args.verbose and args.overrides == ["seeds=[1,2]"]


def test_a_mapping_override_of_the_wrong_types_is_a_config_error():
    """dict fields coerce their keys and values like any other field: a clear error naming the key, not a
    TypeError later (text_mapping is dict[str, str]; YAML reads `1` as an integer)."""
    from earful.config import ConfigError
    from earful.finetune.config import load_finetune_config

    with pytest.raises(ConfigError, match=r"text_mapping \(key 1\): expected a string, got 1"):
        load_finetune_config(None, ["text_mapping={1: a}"])
    with pytest.raises(ConfigError, match=r"text_mapping\['-'\]: expected a string, got 2"):
        load_finetune_config(None, ["text_mapping={'-': 2}"])
    assert load_finetune_config(None, ["text_mapping={'-': ' '}"]).text_mapping == {"-": " "}


def test_an_override_value_with_a_hash_is_kept_whole():
    """YAML reads " #" as the start of a comment: `data.train=/a/run #2/train.jsonl` became "/a/run"."""
    from earful.config import parse_overrides

    got = parse_overrides(["data.train=/a/run #2/train.jsonl", "tracking.name=run #2", "n=#1", "q='a #b'", "k=8",
                           "lr=1e-3 #c", "s=5 # five", "r=run#2"])
    assert got == {"data": {"train": "/a/run #2/train.jsonl"}, "tracking": {"name": "run #2"}, "n": "#1",
                   "q": "a #b", "k": 8, "lr": "1e-3 #c", "s": "5 # five", "r": "run#2"}


@pytest.mark.parametrize("given", [
    ["optim.eps=1e-3", "optim={lr: 0.1}"],  # the whole section dropped the earlier entry: eps stayed 1e-8
    ["data.train=a.jsonl", "data={valid: b.jsonl}"],
    ["text_mapping.c=d", "text_mapping={a: b}"],
])
def test_a_mapping_given_whole_after_an_entry_of_it_is_refused(given) -> None:
    """`optim.weight_decay=0.01 'optim={lr: 1e-4}'` trained with weight_decay 0, without a word (a mapping given
    whole dropped the entries set before it): refused naming both. The other order merges the entry into the
    mapping, as it did; a key given twice keeps its last value, as scripts append their own."""
    from earful.config import ConfigError, parse_overrides
    from earful.finetune.config import load_finetune_config

    both = given[1].split("=")[0]
    with pytest.raises(ConfigError, match=rf"overrides {re.escape(repr(given[0]))} and {re.escape(repr(given[1]))} "
                                          rf"both set {re.escape(both)} \(an entry, then the mapping given whole"):
        parse_overrides(given)
    with pytest.raises(ConfigError, match="both set"):
        load_finetune_config("finetune-demo", given)
    later = load_finetune_config("finetune-demo", ["optim={lr: 1e-4, weight_decay: 0.01}", "optim.lr=5e-5",
                                                   "text_mapping={x: y}", "text_mapping.z=w"])
    assert (later.optim.lr, later.optim.weight_decay, later.text_mapping) == (5e-5, 0.01, {"x": "y", "z": "w"})
    assert parse_overrides(["optim.lr=0.1", "optim.eps=0.5", "optim_x=1"]) == {"optim": {"lr": 0.1, "eps": 0.5},
                                                                              "optim_x": 1}
    assert parse_overrides(["max_steps=5", "optim={lr: 1}", "max_steps=7", "optim={lr: 2}"]) == {
        "max_steps": 7, "optim": {"lr": 2}}


def test_an_empty_key_part_names_the_whole_mapping_form() -> None:
    """`text_mapping..=` (map "." to nothing) failed with "text_mapping['']: expected a string, got {'': ''}": a key
    is cut at its dots, so the override form cannot name a "."; the error now says which form can."""
    from earful.config import ConfigError, parse_overrides
    from earful.finetune.config import load_finetune_config

    for bad in ("text_mapping..=", "optim..lr=1", ".x=1"):
        with pytest.raises(ConfigError, match=r"is no key \(a name between two dots is empty\).*"
                                              r"text_mapping=\{'\.': ''\}"):
            parse_overrides([bad])
    assert load_finetune_config(None, ["text_mapping={'.': ''}"]).text_mapping == {".": ""}


@pytest.mark.parametrize("joined", [True, False])
def test_a_process_that_joined_a_process_group_ends_without_finalization(joined, tmp_path):
    """A torchrun worker could abort in Python's finalization (gloo's threads: SIGABRT after "done", torchrun then
    reported the finished run as failed): once it joined a process group, ``run`` ends it with ``os._exit``, its
    status and last log line kept, finalization (here an atexit handler) skipped; any other process exits as
    usual."""
    code = ("import atexit, sys\n"
            "atexit.register(lambda: print('finalized', flush=True))\n"
            "import earful.train.distributed as D, earful.cli as cli\n"
            f"D._joined = {joined}\n"
            f"sys.argv = ['earful', 'study', 'plan', {str(tmp_path / 'missing.yaml')!r}]\n"
            "cli.run()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "missing.yaml" in r.stderr
    assert ("finalized" in r.stdout) is not joined


def test_an_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    """`config.model: unknown key(s) ['hiden_size']` named no file: which YAML (of a preset, a recipe, overrides)
    held the typo was left to the user."""
    from earful.config import ConfigError
    from earful.finetune.config import load_finetune_config
    from earful.pretrain.config import load_pretrain_config

    bad = tmp_path / "mine.yaml"
    bad.write_text("model:\n  hiden_size: 3\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: config\.model: unknown key\(s\) \['hiden_size'\]"):
        load_pretrain_config(bad)
    bad.write_text("optim:\n  lr: abc\n")
    with pytest.raises(ConfigError, match=rf"^{bad}: config\.optim\.lr: expected a number, got 'abc'"):
        load_finetune_config(bad)


def test_log_lines_stand_beside_a_progress_bar_not_glued_to_it() -> None:
    """A log line written while a progress bar was on the stream was glued to the bar's end (``... loss=3.373]10:34:13
    INFO earful.train.engine: valid step 2``). The bar is cleared, the line written whole, the bar drawn again."""
    import io
    import logging

    from tqdm import tqdm

    from earful.cli import LogBesideBars

    stream = io.StringIO()
    log = logging.getLogger("earful.test.bars")
    handler = LogBesideBars(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log.addHandler(handler)
    log.propagate = False
    try:
        with tqdm(total=4, file=stream, desc="train", mininterval=0, ascii=True) as bar:
            bar.update(2)
            log.warning("valid step 2: loss 3.37")
            bar.update(2)
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().split("\n")
    said = [line for line in lines if "valid step 2" in line]
    assert len(said) == 1 and said[0].rsplit("\r", 1)[-1] == "WARNING valid step 2: loss 3.37", lines
    assert "train" not in said[0].rsplit("\r", 1)[-1] and "4/4" in lines[-1] + lines[-2]  # the bar goes on below


def test_the_help_names_every_study_sub_command(capsys):
    """`earful --help` and the `study` line of its command list said "plan, run, report": `study merge` and
    `study status` (README, docs/cluster.md) were nowhere in the top-level help."""
    with pytest.raises(SystemExit):
        parse(["--help"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.strip().startswith("study ")]
    assert len(lines) == 2, lines  # the description's overview and the command list
    for line in lines:
        assert all(c in line for c in ("plan", "run", "report", "merge", "status")), line


@pytest.mark.parametrize("command", ["evaluate", "transcribe"])
def test_inference_help_gives_the_device_seconds_default(command, capsys):
    """README quotes `--device-seconds` 200 for evaluate and transcribe; their help gave no default."""
    with pytest.raises(SystemExit):
        parse([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "padded audio per inference batch (default 200)" in out


def test_export_help_names_every_file_an_export_writes(capsys):
    """`export-hf --help` listed config.json, model.safetensors and README.md; an export also writes
    preprocessor_config.json and, of a CTC model, vocab.json and tokenizer_config.json."""
    from earful.interop.hf import EXPORT_FILES

    with pytest.raises(SystemExit):
        parse(["export-hf", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(name in out for name in EXPORT_FILES), sorted(n for n in EXPORT_FILES if n not in out)


@pytest.mark.parametrize("command, argv", [
    ("evaluate", ["CKPT", "m.jsonl", "--out", "OUT"]),
    ("transcribe", ["CKPT", "a.wav", "--out", "OUT/t.jsonl"]),
    ("features", ["CKPT", "a.wav", "--out", "OUT"]),
    ("probe", ["CKPT", "--task", "sid", "--train", "m.jsonl", "--out", "OUT"]),
    ("gradvar", ["CKPT", "--manifest", "m.jsonl", "--out", "OUT/g.json"]),
    ("export-hf", ["CKPT", "OUT"]),
    ("prepare", ["CKPT", "OUT"]),
])
@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_one_process_command_under_torchrun_is_refused_on_every_rank(command, argv, rank, tmp_path, monkeypatch,
                                                                       caplog):
    """`torchrun --nproc_per_node 2 -m earful.cli evaluate ...`: rank 1 was told "another earful evaluate is
    running in this folder" (its rank 0's), and transcribe, features and probe ran whole on every rank into one
    output. Every command but pretrain and finetune runs in one process and says so at once, on every rank, before
    reading anything (one rule, in main)."""
    from earful.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    args = [a.replace("OUT", str(tmp_path / "out")).replace("CKPT", str(tmp_path / "ckpt")) for a in argv]
    assert main([command, *args]) == 2
    assert f"earful {command} runs in one process; run it without torchrun (here WORLD_SIZE=2)" in caplog.text
    assert not (tmp_path / "out").exists()


def _options() -> list[tuple[str, argparse.Action]]:
    """Every option of every command and sub-command (``study run``, ``cache remove``), with the command's name."""
    from earful.cli import build_parser

    found = []

    def walk(parser: argparse.ArgumentParser, command: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{command} {name}".strip())
            elif action.option_strings and action.help != argparse.SUPPRESS and command:
                found.append((command, action))

    walk(build_parser(), "")
    return found


def test_every_default_a_help_names_is_the_options_own():
    """A help's "default X" is the value the option takes when not given (a default of None or SUPPRESS comes
    from elsewhere, a config or the checkpoint: not checked here)."""
    for command, action in _options():
        for said in re.findall(r"default:? (-?[\w.]+(?:-[\w.]+)*)", action.help or ""):
            if action.default is None or isinstance(action.default, bool) or action.default == argparse.SUPPRESS:
                continue
            real = action.default
            ok = float(said) == real if isinstance(real, int | float) else said == real
            assert ok, f"earful {command} {action.option_strings[0]}: help says default {said}, it is {real!r}"


def test_every_option_with_a_default_says_it():
    """`--precision`, `--device`, `--num-workers`, `synth --seed` ... took a default their help did not name (or had
    no help): a user could not tell, nor tell one command's `--seed` from another's."""
    missing = [f"earful {command} {action.option_strings[0]} (default {action.default!r})"
               for command, action in _options()
               if action.default not in (None, False, argparse.SUPPRESS) and "default" not in (action.help or "")]
    assert not missing, missing


def test_every_device_option_names_what_it_takes():
    """`evaluate` and `transcribe` said `auto | cpu | cuda` and `gradvar` nothing, though each takes cuda:N too
    (``resolve_device``), as `probe` said; auto is the default everywhere."""
    devices = [(command, action) for command, action in _options() if "--device" in action.option_strings]
    assert {command for command, _ in devices} >= {"evaluate", "transcribe", "gradvar", "probe"}
    for command, action in devices:
        assert action.default == "auto", command
        assert "auto (CUDA where there is one, the default), cpu, cuda or cuda:N" in action.help, command
