"""A study is a YAML file: corpus, pre-training recipe, a grid of batch sizes, how long each runs
(``fixed-steps`` or ``fixed-hours``), the learning-rate rule, milestones at nominal hours (``ckpt_hours``), the
label sets to fine-tune on, and seeds. See ``studies/*.yaml``.

Each grid entry is a number (batch seconds) or a mapping that pins the device layout and the learning
rate, as the paper's own table does::

    grid:
      - 87.5
      - {batch_seconds: 300, devices: 2, device_seconds: 150, lr: 1.12e-4}
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from earful.config import (
    PRESET_DIR,
    ConfigError,
    flatten,
    from_dict,
    merge,
    parse_overrides,
    plain_name,
    preset_file,
    read_yaml,
    renamed_settings,
    to_dict,
)
from earful.data.budget import BatchBudget
from earful.train.config import TrackingConfig, config_source, nominal_hours, nominal_steps, scale_lr


@dataclass
class SynthSpec:
    hours: float = 0.4
    domain: str = "commands"
    seed: int = 0
    labelled_fraction: float = 0.25


STUDY_DIR = PRESET_DIR / "studies"  # the study presets (`earful study run demo`); a checkout's studies/ links here

# the test splits fine-tunings are evaluated on where the study's corpus.test names none
DEFAULT_TEST_SETS = {"dev": "manifests/dev.jsonl", "test": "manifests/test.jsonl"}


@dataclass
class CorpusConfig:
    dir: str = ""  # corpus folder, relative to the folder earful runs in (not the YAML's); manifests below are
    # relative to it (an absolute path stays as it is)
    synth: SynthSpec | None = None  # build the built-in corpus into ``dir`` if its manifests are missing
    train: str = "manifests/train.jsonl"
    valid: str = "manifests/dev.jsonl"  # the pre-training's validation (its data.valid)
    label_sets: dict[str, str] = field(default_factory=dict)  # name → manifest, for fine-tuning
    finetune_valid: str = "manifests/dev.jsonl"  # the fine-tuning's validation (its data.valid: picks best)
    test: dict[str, str] = field(default_factory=dict)  # split name → manifest (default: dev and test)

    def test_sets(self) -> dict[str, str]:
        return self.test or dict(DEFAULT_TEST_SETS)

    def path(self, rel: str, root: Path) -> str:
        p = Path(rel)
        if p.is_absolute():
            return str(p)
        base = Path(self.dir)
        if not base.is_absolute():
            base = root / base
        return str(base / p)


@dataclass
class GridEntry:
    batch_seconds: float = 0.0
    devices: int = 1
    device_seconds: float | None = None  # default: the study's device_seconds (capped at the batch)
    lr: float | None = None  # pin the peak lr (else the study's lr rule)
    tag: str | None = None

    @property
    def run_tag(self) -> str:
        """What its runs are named by (``TAG-seedN``): its tag, else its batch size (``8s``)."""
        return self.tag or fmt_seconds(self.batch_seconds)


CHECKPOINT_CHOICES = ("final", "best", "milestones")  # what finetune.checkpoints and gradvar_checkpoints may name
# whose overrides a recipe's error names (the recipe's own YAML file named before them)
OVERRIDES_FROM = {"pretrain": "the study's pretrain_overrides", "finetune": "the study's finetune.overrides"}


def unknown_checkpoints(key: str, names: list[str]) -> str:
    """Why the checkpoints ``names`` that study setting ``key`` chooses are not ``CHECKPOINT_CHOICES``' ("" when
    they are)."""
    unknown = [c for c in names if c not in CHECKPOINT_CHOICES]
    return f"{key}: unknown {unknown} (choose among {' | '.join(CHECKPOINT_CHOICES)})" if unknown else ""


@dataclass
class FinetuneSpec:
    config: str | None = None  # fine-tuning YAML (preset name or path)
    # key=value over config; not init, seed, data.train, data.valid, which the study sets for each fine-tuning
    # (stages.finetune_run_settings), here or in per_label_set: check_recipes refuses them
    overrides: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=lambda: ["final"])  # final | best | milestones
    # the same architecture from its random init (the run's checkpoints/init), fine-tuned with the same recipe
    # (scratch) or with the CNN trainable / frozen whatever the recipe says
    baselines: list[str] = field(default_factory=lambda: ["scratch"])  # scratch | scratch-{trainable,frozen}-cnn
    label_sets: list[str] | None = None  # subset of corpus.label_sets (default all)
    # the label sets the milestones (hours-H, steps-N: cycle minima) are fine-tuned on, of label_sets (default:
    # every one of them; []: none); final, best and the baselines take every label set. The paper fine-tunes its
    # progress checkpoints on 10 min and 100 h only
    milestone_label_sets: list[str] | None = None
    # more overrides for one label set, over ``overrides`` (the paper: 12k steps on 10 min … 320k on 960 h)
    per_label_set: dict[str, list[str]] = field(default_factory=dict)

    def overrides_for(self, label_set: str) -> list[str]:
        """The fine-tuning overrides of one label set: its own after the study's (its ``max_steps`` stands)."""
        return [*self.overrides, *self.per_label_set.get(label_set, [])]


@dataclass
class LMSpec:
    """``lm:``: every fine-tuning is also decoded with a word n-gram LM (flashlight's lexicon beam search, as
    ``earful evaluate --lm``; ``pip install 'earful[lm]'``), beside greedy decoding. The beam options are
    :class:`earful.eval.beam.BeamOptions`' (and ``earful evaluate``'s ``--beam`` ...), their defaults the paper's."""

    path: str = ""  # ARPA file (or KenLM binary with a lexicon), relative to the folder earful runs in (as corpus.dir)
    lexicon: str | None = None  # ``word w o r d |`` a line, relative as path; default: the ARPA file's unigrams
    beam: int = 50
    beam_threshold: float = 50.0
    lm_weight: float = 2.0
    word_score: float = 0.0

    def resolved(self, root: Path) -> tuple[Path, Path | None]:
        """The LM file and the lexicon (None: the ARPA file's words), relative to ``root`` unless absolute."""
        def at(p: str) -> Path:
            return Path(p) if Path(p).is_absolute() else root / p
        return at(self.path), at(self.lexicon) if self.lexicon else None

    def beam_options(self) -> Any:
        """The :class:`earful.eval.beam.BeamOptions` of these settings (checked in their ranges)."""
        from earful.eval.beam import BeamOptions

        return BeamOptions(**{k: getattr(self, k) for k in BEAM_SETTINGS})


BEAM_SETTINGS = ("beam", "beam_threshold", "lm_weight", "word_score")  # LMSpec's, by BeamOptions' names


@dataclass
class SlurmConfig:
    """``launcher: slurm``: each pre-training, fine-tuning, probe and gradvar is a Slurm job submitted through
    submitit (``earful/study/slurm.py``, docs/cluster.md). A run of D devices gets ceil(D / gpus_per_node) nodes with
    the same number of GPUs each, one task (process, rank) per GPU; a fine-tuning, a probe or a gradvar gets one GPU."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int = 8  # the most GPUs one node gives a run
    cpus_per_gpu: int = 8  # CPU cores per task (the trainer and its data.num_workers)
    mem_gb_per_gpu: float | None = None  # memory per GPU (None: the partition's default)
    time_min: int = 1440  # time limit of one job; a run that needs longer checkpoints and requeues itself
    signal_delay_s: int = 180  # SIGUSR1 this long before the time limit: checkpoint, requeue, resume
    max_requeues: int = 30  # requeues at the time limit before the job gives up (pre-emptions do not count)
    setup: list[str] = field(default_factory=list)  # shell lines before the job starts (module load …)
    additional: dict[str, Any] = field(default_factory=dict)  # more sbatch options, e.g. {mail-user: me@lab.org}
    folder: str = "submitit"  # job scripts, pickles and logs, under --out
    poll_seconds: float = 10.0  # how often the study looks at its jobs


@dataclass
class StudyConfig:
    name: str = "study"
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    pretrain_config: str | None = None  # pre-training YAML the runs start from (preset name or path)
    # key=value over pretrain_config; not of what the study sets for each run (its batch, steps, lr, seed, data,
    # milestones, the cyclic schedule: stages.pretrain_run_settings), refused by check_recipes naming the study key
    pretrain_overrides: list[str] = field(default_factory=list)
    grid: list[Any] = field(default_factory=list)  # numbers or GridEntry mappings
    mode: Literal["fixed-steps", "fixed-hours"] = "fixed-steps"
    steps: int = 0  # fixed-steps: optimizer steps of every run
    hours: float = 0.0  # fixed-hours: hours seen by every run, nominal (batch × steps: steps = nominal_steps)
    lr: float = 5e-4  # peak lr at the reference batch
    lr_scaling: Literal["linear", "sqrt", "none"] = "sqrt"  # each run's lr: optim.lr_scaling's rule, applied here
    reference_batch_seconds: float = 6000.0
    device_seconds: float = 150.0
    # milestones hours-H at these nominal hours (batch × steps), to compare batch sizes at equal hours: each run's
    # ckpt_hours, with ckpt_hours_basis: nominal (before, the study called them milestone_hours: RENAMED)
    ckpt_hours: list[float] = field(default_factory=list)
    # the paper's design (fixed-steps): a cyclic triangular schedule of this many whole cycles (lr/100 <-> lr),
    # a checkpoint at every cycle minimum (``steps-N``), compared at equal steps and at equal nominal hours
    cycles: int = 0
    # `earful gradvar` on the checkpoints of gradvar_checkpoints: this many independent batches of the run's own
    # batch size (the paper: 10; 0 = off), for the gradient noise against batch size (C6)
    gradvar_batches: int = 0
    # the checkpoints of each run gradvar measures, as finetune.checkpoints names them: final (C6 judges it), and
    # best or the milestones (hours-H, steps-N) for the noise over training, as the paper measured every 5k steps
    gradvar_checkpoints: list[str] = field(default_factory=lambda: ["final"])
    # `earful probe` (docs/probes.md) on every pre-trained checkpoint the study keeps (the cycle minima or
    # milestones, and the final), each run's random init and filterbanks: tasks of pr | asr | sid | ic, with
    # these probe seeds; key=value probe recipe overrides in probe_overrides (e.g. pr.epochs=5). The probes read
    # probe_corpus/manifests/{train,dev,test,labelled-10h}.jsonl (as `earful synth` writes them), checked before
    # any run starts; their recipes and those manifests are part of the study's recipe fingerprint
    probes: list[str] = field(default_factory=list)
    # the corpus folder the probes read (made by `earful synth`; relative to the folder earful runs in, as corpus.dir);
    # empty: corpus.dir. A study pre-training on LibriSpeech probes on the built-in corpus this way, as SUPERB
    # probes on datasets of its own
    probe_corpus: str = ""
    probe_seeds: list[int] = field(default_factory=lambda: [0])
    probe_overrides: list[str] = field(default_factory=list)
    finetune: FinetuneSpec = field(default_factory=FinetuneSpec)
    # decode every fine-tuning with this n-gram LM too (the paper's 4-gram word decoding), beside greedy; null: greedy
    # only. Added to a finished study, its fine-tunings are decoded with it on the next run (nothing else redone)
    lm: LMSpec | None = None
    seeds: list[int] = field(default_factory=lambda: [1])
    throughput: float | None = None  # audio seconds per second per device, for the plan's wall-clock
    # runs executed at once on this machine (pre-trainings and fine-tunings, each in its own process with
    # cores/jobs threads); on 2 CPU cores two 1-thread runs do ~1.2× the work of one 2-thread run
    jobs: int = 1
    # where the runs go: this machine (`jobs` at a time), or one Slurm job each through submitit (`slurm:`)
    launcher: Literal["local", "slurm"] = "local"
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    # experiment trackers of every run (when backends are named here, else each recipe's own `tracking:`); the
    # study groups its runs under its name and keeps the local stores in OUT/tracking
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def probe_dir(self, root: Path) -> str:
        """The corpus folder the probes read: ``probe_corpus`` (relative to ``root`` unless absolute), else the
        study's corpus."""
        if not self.probe_corpus:
            return self.corpus.path(".", root)
        p = Path(self.probe_corpus)
        return str(p if p.is_absolute() else root / p)

    def entries(self) -> list[GridEntry]:
        out = []
        for i, item in enumerate(self.grid):
            if isinstance(item, str):  # YAML 1.1 reads 6e3 (no dot) as a string
                try:
                    item = float(item)
                except ValueError:
                    pass
            if isinstance(item, bool) or not isinstance(item, int | float | dict):
                raise ConfigError(f"grid[{i}]={item!r}: expected a batch size in seconds (a number) or a mapping "
                                  "({batch_seconds: …, devices: …, device_seconds: …, lr: …, tag: …})")
            e = GridEntry(batch_seconds=float(item)) if isinstance(item, int | float) else from_dict(
                GridEntry, dict(item), f"grid[{i}]")
            check_entry(e, i)
            out.append(e)
        if not out:
            raise ValueError("the study's grid is empty")
        return out


@dataclass
class PlannedRun:
    tag: str
    batch_seconds: float
    devices: int
    device_seconds: float
    lr: float
    steps: int
    hours: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.tag}-seed{self.seed}"

    @property
    def budget(self) -> BatchBudget:
        """The run's batch budget: its accumulation and the micro-batch seconds it packs to."""
        return BatchBudget(self.batch_seconds, self.device_seconds, self.devices)


def fmt_seconds(b: float) -> str:
    """87.5 → '87.5s', 600 → '10min', 4800 → '80min'."""
    if b >= 300 and b % 60 == 0:
        return f"{int(b // 60)}min"
    return f"{b:g}s"


def plan_runs(study: StudyConfig) -> list[PlannedRun]:
    runs = []
    for seed in study.seeds:
        for e in study.entries():
            dev_s = min(e.device_seconds or study.device_seconds, e.batch_seconds)
            lr = e.lr if e.lr is not None else scale_lr(study.lr, e.batch_seconds, study.reference_batch_seconds,
                                                         study.lr_scaling)
            if study.mode == "fixed-steps":
                if study.steps <= 0:
                    raise ValueError("fixed-steps: set steps > 0")
                steps = study.steps
                if study.cycles and steps % (2 * study.cycles):
                    raise ValueError(f"cycles={study.cycles}: steps={steps} is not a whole number of cycles "
                                     f"(a multiple of {2 * study.cycles})")
            else:
                if not 0 < study.hours < math.inf:
                    raise ValueError(f"fixed-hours: set hours to a finite number > 0 (got {study.hours})")
                steps = max(1, nominal_steps(study.hours, e.batch_seconds))
            runs.append(PlannedRun(tag=e.run_tag, batch_seconds=e.batch_seconds,
                                   devices=e.devices, device_seconds=dev_s, lr=lr, steps=steps,
                                   hours=nominal_hours(e.batch_seconds, steps), seed=seed))
    names = [r.name for r in runs]
    if len(set(names)) < len(names):  # one folder would serve (or be trained by) two runs
        twice = sorted(named_twice(names))
        raise ValueError(f"study: grid entries share run names {twice}; give each entry its own `tag:`")
    tags: dict[float, set[str]] = {}
    for r in runs:
        tags.setdefault(r.batch_seconds, set()).add(r.tag)
    shared = {b: sorted(t) for b, t in tags.items() if len(t) > 1}
    if shared:  # the report compares batch sizes: it would pool these as if they were seeds
        raise ValueError(f"study: one grid entry per batch size (the report compares batch sizes, and would pool "
                         f"{shared} as seeds); sweep lr or layouts at one batch size in separate studies (--out)")
    return runs


def cycle_minima(study: StudyConfig) -> list[int]:
    """The steps at which a cyclic schedule of ``cycles`` whole cycles is at its minimum, the last excepted
    (it is the run's end): where the paper took its progress checkpoints."""
    if not study.cycles:
        return []
    period = study.steps // study.cycles
    return [period * j for j in range(1, study.cycles)]


def finetuned_label_sets(study: StudyConfig) -> list[str]:
    """The label sets the study fine-tunes on: ``finetune.label_sets``, else every one of ``corpus.label_sets``."""
    return list(study.finetune.label_sets or study.corpus.label_sets)


def milestone_label_sets(study: StudyConfig) -> list[str]:
    """The label sets the study fine-tunes its milestones on: ``finetune.milestone_label_sets``, else every label set
    it fine-tunes on (:func:`finetuned_label_sets`)."""
    every = finetuned_label_sets(study)
    named = study.finetune.milestone_label_sets
    return every if named is None else [ls for ls in every if ls in named]


def check_names(study: StudyConfig, where: str) -> None:
    """Every name that becomes a folder (label sets, test splits, grid tags, the study) is a plain name."""
    plain_name(study.name, "name", where)
    for ls in study.corpus.label_sets:
        plain_name(ls, f"corpus.label_sets[{ls!r}]", where)
    for split in study.corpus.test:
        plain_name(split, f"corpus.test[{split!r}]", where)
    for i, e in enumerate(study.entries()):
        if e.tag is not None:
            plain_name(e.tag, f"grid[{i}].tag", where)
            # a folder whose name starts with "." is a temporary one to merge, status and the study's own checks
            # ("[!.]*"): its finished work would be left out of them
            if e.tag.startswith("."):
                raise ConfigError(f"{where}: grid[{i}].tag={e.tag!r}: a grid tag may not start with '.' (its "
                                  "run folders would be taken for temporary ones: merge and status skip them)")
            # the report tells the baselines from the pre-trained runs by these names
            if e.tag.startswith("scratch") or e.tag in RESERVED_TAGS:
                raise ConfigError(f"{where}: grid[{i}].tag={e.tag!r}: the name of a baseline (scratch…, "
                                  f"{', '.join(RESERVED_TAGS)}); the report would take the run for it: choose "
                                  "another tag")


# the tags of the baselines' results and probes (``earful/study/run.py``; the report finds them by these): no grid
# entry may take one
RANDOM_INIT_TAG = "random-init"
FBANK_TAG = "fbank"
RESERVED_TAGS = (RANDOM_INIT_TAG, FBANK_TAG)


def finite_positive(x: Any) -> bool:
    """Whether ``x`` is a number (not a bool), finite and > 0: the study's seconds, hours, rates and lrs."""
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def check_entry(e: GridEntry, i: int) -> None:
    """Grid entry ``i``'s numbers, each refused naming ``grid[i].KEY``: a NaN batch was "cannot convert float NaN to
    integer", ``devices: 0`` a ZeroDivisionError traceback in the plan."""
    bad = [f"grid[{i}].{key}={getattr(e, key)}: expected a finite number > 0"
           for key in ("batch_seconds", "device_seconds", "lr")
           if (getattr(e, key) is not None or key == "batch_seconds") and not finite_positive(getattr(e, key))]
    if isinstance(e.devices, bool) or not isinstance(e.devices, int) or e.devices < 1:
        bad.append(f"grid[{i}].devices={e.devices}: expected a whole number of devices >= 1")
    if bad:
        raise ConfigError("; ".join(bad))


def check_numbers(study: StudyConfig, where: str) -> None:
    """The study's own numbers, each refused naming its key: a wrong one failed deep inside (a ZeroDivisionError's
    traceback, "cannot convert float NaN to integer") or only after every pre-training had finished (gradvar)."""
    bad = []
    for key in ("lr", "reference_batch_seconds", "device_seconds"):
        if not finite_positive(getattr(study, key)):
            bad.append(f"{key}={getattr(study, key)}: expected a finite number > 0")
    if study.throughput is not None and not finite_positive(study.throughput):
        bad.append(f"throughput={study.throughput}: expected a finite number of audio seconds a second > 0 (or null)")
    if [h for h in study.ckpt_hours if not finite_positive(h)]:
        bad.append(f"ckpt_hours={study.ckpt_hours}: expected finite nominal hours > 0")
    if study.jobs < 1:  # ran one at a time, as jobs: 1, in silence
        bad.append(f"jobs={study.jobs}: expected the number of runs at once, at least 1")
    if study.cycles < 0:
        bad.append(f"cycles={study.cycles}: expected 0 (off) or a number of whole cycles >= 1")
    if study.gradvar_batches < 0 or study.gradvar_batches == 1:
        bad.append(f"gradvar_batches={study.gradvar_batches}: expected 0 (off) or at least 2 batches (a variance "
                   "needs two)")
    if bad:
        raise ConfigError(f"{where}: {'; '.join(bad)}")


def check_slurm(slurm: SlurmConfig, where: str) -> None:
    """The job settings that become sbatch options: a wrong one was written into every job's script
    (``--cpus-per-task=0``, ``--mem=-1GB``), and a ``signal_delay_s`` as long as the time limit had Slurm signal
    every job as it started, which checkpointed and requeued until ``max_requeues`` ran out."""
    bad = [f"slurm.{key}={getattr(slurm, key)}: expected at least 1" for key in ("gpus_per_node", "time_min")
           if getattr(slurm, key) < 1]
    if slurm.cpus_per_gpu < 1:
        bad.append(f"slurm.cpus_per_gpu={slurm.cpus_per_gpu}: expected at least 1")
    if slurm.mem_gb_per_gpu is not None and not finite_positive(slurm.mem_gb_per_gpu):
        bad.append(f"slurm.mem_gb_per_gpu={slurm.mem_gb_per_gpu}: expected a number of GB > 0 (or null: the "
                   "partition's default)")
    if slurm.time_min >= 1 and not 0 <= slurm.signal_delay_s < slurm.time_min * 60:
        bad.append(f"slurm.signal_delay_s={slurm.signal_delay_s}: expected seconds >= 0 and shorter than the time "
                   f"limit (slurm.time_min={slurm.time_min}, {slurm.time_min * 60} s), else Slurm signals each "
                   "job as it starts")
    elif slurm.signal_delay_s > max(600, slurm.time_min * 12):
        # submitit counts a signal as the time limit's once the job has run min(80 %, all but 10 minutes) of it
        bad.append(f"slurm.signal_delay_s={slurm.signal_delay_s}: expected at most {max(600, slurm.time_min * 12)} s "
                   f"(10 minutes, or 20 % of slurm.time_min={slurm.time_min}): earlier, submitit takes the time "
                   "limit's signal for a pre-emption, and slurm.max_requeues never applies")
    if slurm.max_requeues < 0:
        bad.append(f"slurm.max_requeues={slurm.max_requeues}: expected at least 0")
    if not finite_positive(slurm.poll_seconds):
        bad.append(f"slurm.poll_seconds={slurm.poll_seconds}: expected a finite number > 0")
    for key in slurm.additional:
        option = str(key).replace("_", "-")
        if option.startswith("-"):  # submitit writes the dashes itself: "#SBATCH ----signal=..."
            bad.append(f"slurm.additional.{key}: write an sbatch option without its leading dashes "
                       f"({option.lstrip('-')})")
            option = option.lstrip("-")
        own = EARFUL_SBATCH.get(option)
        if own is not None:  # it replaced earful's own option: USR2 for USR1, say, which the trainer does not stop on
            bad.append(f"slurm.additional.{key}: an sbatch option earful writes itself; set {own}")
        elif (why := CONFLICTING_SBATCH.get(option)) is not None:
            bad.append(f"slurm.additional.{key}: {why}")
    if bad:
        raise ConfigError(f"{where}: {'; '.join(bad)}")


# the sbatch options earful writes for every job, by the settings that give them: in ``slurm.additional`` they
# replaced earful's own (submitit writes the additional ones last)
EARFUL_SBATCH = {
    "signal": "slurm.signal_delay_s (the signal is earful's, USR1: the trainer checkpoints and requeues on it)",
    "time": "slurm.time_min", "nodes": "slurm.gpus_per_node (nodes follow from a run's devices)",
    "ntasks-per-node": "slurm.gpus_per_node (a task a GPU)", "gpus-per-node": "slurm.gpus_per_node",
    "cpus-per-task": "slurm.cpus_per_gpu", "mem": "slurm.mem_gb_per_gpu",
    "partition": "slurm.partition", "account": "slurm.account", "qos": "slurm.qos", "constraint": "slurm.constraint",
}
# sbatch options that contradict what earful or submitit writes (Slurm takes --ntasks over --ntasks-per-node,
# refuses --mem beside --mem-per-cpu; --no-requeue stops the requeue a time limit needs): why, and what to set
_GPUS = "earful asks for one task and one GPU a rank (--ntasks-per-node, --gpus-per-node): set slurm.gpus_per_node"
CONFLICTING_SBATCH = {
    "gres": f"asks for GPUs a second way; {_GPUS}, and a GPU type with slurm.constraint",
    "gpus": _GPUS, "gpus-per-task": _GPUS, "ntasks": _GPUS, "ntasks-per-gpu": _GPUS, "gpus-per-socket": _GPUS,
    "cpus-per-gpu": "earful writes --cpus-per-task: set slurm.cpus_per_gpu",
    "mem-per-cpu": "Slurm refuses it beside the --mem earful writes: set slurm.mem_gb_per_gpu",
    "mem-per-gpu": "earful writes --mem: set slurm.mem_gb_per_gpu",
    "no-requeue": "a study's jobs requeue themselves at their time limit (slurm.signal_delay_s, slurm.max_requeues)",
    "open-mode": "submitit appends a requeued job's log to its earlier segments'",
    "job-name": "earful names the study's jobs (earful-STUDY-...)",
    "output": "submitit writes each job's log in the study folder (OUT/<slurm.folder>/<job id>)",
    "error": "submitit writes each job's log in the study folder (OUT/<slurm.folder>/<job id>)",
    "array": "earful submits each run as a job of its own",
}


# study keys renamed, by their old dotted name: (today's, the training's key it sets and whose name it took); a
# study file or a study.json of before names them so. corpus.dev was the fine-tuning's validation manifest
RENAMED = {"lr_rule": ("lr_scaling", "optim.lr_scaling"), "milestone_hours": ("ckpt_hours", "ckpt_hours"),
           "corpus.dev": ("corpus.finetune_valid", "data.valid")}
NEW_NAMES = {old: new for old, (new, _) in RENAMED.items()}


def renamed(data: dict[str, Any]) -> dict[str, Any]:
    """A study mapping (a study.json of before, nested, or a fingerprint's flattened study part) with today's
    names for ``RENAMED`` keys."""
    return renamed_settings(data, table=NEW_NAMES)


STUDY_JSON_EXTRA = ("format", "plan", "cycle_minima", "fingerprint")  # what study.json holds beside the config


def study_of_record(saved: dict[str, Any], where: str = "study.json") -> StudyConfig:
    """The study config a study folder's study.json records (keys renamed since take today's names); a
    TypeError or ValueError where it cannot be read as one (a study.json of an earlier version)."""
    return from_dict(StudyConfig, renamed({k: v for k, v in saved.items() if k not in STUDY_JSON_EXTRA}), where)


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """The study of the YAML file ``path``, or of earful's study preset of that name (``demo``, ``paper``: the
    files of ``earful/configs/studies/``, which a checkout also has as ``studies/``), with ``overrides``."""
    path = preset_file(path, STUDY_DIR, what="study")
    given = read_yaml(path)
    over = parse_overrides(overrides) if overrides else {}
    where = config_source(path, overrides)  # an error names the overrides where there are any
    old = [(k, where) for where, d in ((str(path), given), ("the overrides", over)) for k in flatten(d)
           if k in RENAMED]
    if old:
        raise ConfigError("; ".join(f"{where}: {k} is now called {RENAMED[k][0]} (the same values), as the "
                                    f"training's {RENAMED[k][1]}" for k, where in old))
    data = merge(merge(to_dict(StudyConfig()), given, StudyConfig), over, StudyConfig)
    study = from_dict(StudyConfig, data, where)
    try:
        study.entries()  # validate
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    check_names(study, where)
    if study.cycles and study.mode != "fixed-steps":
        raise ValueError(f"{where}: cycles={study.cycles} needs mode: fixed-steps (every batch size the same steps)")
    unused = ("hours", study.hours) if study.mode == "fixed-steps" else ("steps", study.steps)
    if unused[1]:  # said: a study file switched to the other mode by an override keeps its own key
        logging.getLogger(__name__).warning(
            "%s: %s=%g is not used in mode %s (every run takes %s); mode=%s uses it", where, *unused, study.mode,
            f"steps={study.steps}" if study.mode == "fixed-steps" else f"hours={study.hours:g} seen",
            "fixed-hours" if study.mode == "fixed-steps" else "fixed-steps")
    negative = [s for s in (*study.seeds, *study.probe_seeds) if s < 0]
    if negative:
        raise ValueError(f"{where}: seeds and probe_seeds must be >= 0 (got {negative})")
    for key, seeds in (("seeds", study.seeds), ("probe_seeds", study.probe_seeds if study.probes else [0])):
        if not seeds:
            raise ValueError(f"{where}: {key} is empty; give at least one seed, e.g. {key}: [1]")
        if twice := named_twice(seeds):
            raise ValueError(f"{where}: {key} names {twice} more than once; give each seed once")
    # each named twice was done once but recorded twice (probes, fine-tunings: duplicated rows in the results and
    # CSVs) or counted twice by the plan
    f = study.finetune
    for key, names in (("probes", study.probes), ("finetune.checkpoints", f.checkpoints),
                       ("finetune.baselines", f.baselines), ("finetune.label_sets", f.label_sets or []),
                       ("finetune.milestone_label_sets", f.milestone_label_sets or []),
                       ("gradvar_checkpoints", study.gradvar_checkpoints), ("ckpt_hours", study.ckpt_hours)):
        if twice := named_twice(names):
            raise ConfigError(f"{where}: {key} names {twice} more than once; name each once")
    check_numbers(study, where)
    study.tracking.validate()
    check_slurm(study.slurm, where)
    if study.corpus.synth is not None and not study.corpus.dir.strip():
        raise ValueError(f"{where}: corpus.synth builds the corpus into corpus.dir, which is not given: its folders "
                         "(train/, dev/, test/, manifests/) would be written into the folder earful runs in; give "
                         "corpus.dir, e.g. runs/corpus-demo-1.5h")
    if study.finetune.label_sets == [] and study.corpus.label_sets:  # `or`: every label set, as when not given
        raise ConfigError(f"{where}: finetune.label_sets is empty, which reads as not given: every one of "
                          f"corpus.label_sets {list(study.corpus.label_sets)} would be fine-tuned on; to fine-tune "
                          "none, set corpus.label_sets: {} (or finetune.checkpoints and finetune.baselines: [])")
    unknown = set(study.finetune.per_label_set) - set(study.corpus.label_sets)
    if unknown:
        raise ValueError(f"{where}: finetune.per_label_set names {sorted(unknown)}, not in corpus.label_sets")
    if (named := study.finetune.milestone_label_sets) is not None:
        if unknown := sorted(set(named) - set(study.corpus.label_sets)):
            raise ValueError(f"{where}: finetune.milestone_label_sets names {unknown}, not in corpus.label_sets "
                             f"{list(study.corpus.label_sets)}")
        if unknown := sorted(set(named) - set(finetuned_label_sets(study))):
            raise ValueError(f"{where}: finetune.milestone_label_sets names {unknown}, not in finetune.label_sets "
                             f"{study.finetune.label_sets} (the milestones are fine-tuned on some of the label sets "
                             "the study fine-tunes on)")
    if study.lm is not None:
        check_lm_settings(study.lm, where)
    if why := unknown_checkpoints("gradvar_checkpoints", study.gradvar_checkpoints):
        raise ConfigError(f"{where}: {why}")
    if "final" not in study.gradvar_checkpoints:
        raise ConfigError(f"{where}: gradvar_checkpoints={study.gradvar_checkpoints}: name final too (C6 judges the "
                          "gradient noise at the final checkpoint; the others are measured beside it)")
    return study


def named_twice(values: list[Any]) -> list[Any]:
    """The values ``values`` holds more than once, in the order of their first appearance ([] when none)."""
    return list(dict.fromkeys(v for v in values if values.count(v) > 1))


def check_lm_settings(lm: LMSpec, where: str) -> None:
    """The ``lm:`` section's values: a file named, beam options in their ranges (each named ``lm.KEY``). Its files
    and flashlight are checked before the study runs (``earful.study.run.check_lm``)."""
    from earful.eval.beam import check_beam_options

    if not str(lm.path or "").strip():
        raise ConfigError(f"{where}: lm.path is not given: name the ARPA file (e.g. LibriSpeech's 4-gram.arpa), or "
                          "set lm: null for greedy decoding alone")
    try:
        check_beam_options({k: getattr(lm, k) for k in BEAM_SETTINGS}, {k: f"lm.{k}" for k in BEAM_SETTINGS})
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
