"""The ``gdp`` command: LightningCLI over :class:`GDPModule` and :class:`GDPDataModule`.

``gdp predict --config configs/prior/skimage64.yaml --config configs/task/sr4.yaml --data.input_dir photos/``

``gdp fit --config configs/prior/skimage64.yaml --config configs/task/sr4.yaml --config configs/finetune.yaml
--data.input_dir clean_photos/`` fine-tunes the prior; ``gdp export CHECKPOINT OUTPUT`` writes its EMA weights as
a plain guided-diffusion state dict.

Configs compose left to right; every option can be overridden on the command line. Besides ``model``,
``data`` and ``trainer``, the options hold ``writer`` (:class:`RestorationWriter`: where the outputs go,
resume) and ``trajectory`` (:class:`TrajectoryLogger`: what goes to TensorBoard).
User errors (a missing folder, an unreadable image, a checkpoint of another architecture, an impossible
option) end with one line ``gdp: error: ...`` and exit status 2, before anything is restored; ``GDP_DEBUG=1`` shows
the traceback. A run that restored its inputs but left some without output (their restoration diverged, see
:mod:`gdp_lightning.sampling.divergence`, or a file of theirs could not be used: recorded, the others restored)
ends with one line naming them and exit status 3; one stopped by SIGTERM, with exit status 143.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from lightning.fabric.connector import _PRECISION_INPUT
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from . import __version__
from .trajectory import TrajectoryLogger
from .writer import RestorationWriter
from .data import GDPDataModule
from .errors import ConfigError, GDPError
from .finetune import FinetuneData, FinetuneModule
from .module import GDPModule
from .precision import training_precision
from .resources import keep_freed_memory
from .run_folder import existing_ancestor, remove_unused_log_folder

__all__ = ["GDPCLI", "GDPTrainer", "main", "USER_ERRORS", "EXIT_FAILED", "EXIT_DIVERGED", "EXIT_TERMINATED"]

#: exit status of a run that finished but left some inputs without output (their restoration diverged, or a file of
#: theirs could not be used): the others are restored, the records say why
EXIT_FAILED = 3
EXIT_DIVERGED = EXIT_FAILED
#: exit status of a run stopped by SIGTERM (128 + 15, as the shell reports a process the signal ended)
EXIT_TERMINATED = 143

DESCRIPTION = (
    "gdp-lightning: restore and enhance images with a pretrained diffusion model as the only prior "
    "(GDP, Fei et al., CVPR 2023). predict/validate/test restore, fit fine-tunes the prior; "
    "'gdp export CHECKPOINT OUTPUT' writes a fit checkpoint's EMA weights as a guided-diffusion state dict."
)

TRAINER_DEFAULTS = {
    # GDP's guidance and φ need autograd; Lightning would run predict/validate/test under inference_mode
    "inference_mode": False,
    "logger": {
        "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
        "init_args": {"save_dir": "logs", "name": "gdp"},
    },
}


SUBCOMMANDS = {
    "predict": "Restore the images of --data.input_dir (or --data.files) and write them to --writer.output_dir.",
    "test": "Restore clean images degraded by the task (--data.mode synthetic) and score them against them.",
    "validate": "Restore clean images degraded by the task and score them (as test; Lightning's validate loop).",
    "fit": "Fine-tune the prior on clean images of a new domain (--config configs/finetune.yaml).",
}
EXPORT_HELP = "Write a fit checkpoint's EMA weights as a plain guided-diffusion state dict."

#: option prefixes left out of a subcommand's short --help (shown by --help-all)
ADVANCED = ("trainer.", "seed_everything", "optimizer", "lr_scheduler")


class _FullHelp(argparse.Action):
    """``--help-all``: every option, the trainer's included."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.full_help = True
        parser.print_help()
        parser.exit()


class GDPArgumentParser(LightningArgumentParser):
    """Option errors (an unknown key, a wrong type, a missing file) end with one ``gdp: error: ...`` line and
    exit status 2, like every other user error, instead of the whole usage text. A subcommand's ``--help`` shows
    the project's options; ``--help-all`` adds the trainer's and those of other subcommands."""

    full_help = False
    subcommand: Optional[str] = None

    def format_help(self) -> str:
        if self.full_help or self.subcommand is None:
            return super().format_help()
        hidden = ADVANCED
        changed = []
        for action in self._actions:
            dest = str(action.dest)
            if action.help != argparse.SUPPRESS and (dest.startswith(hidden) or f"{dest}." in hidden):
                changed.append((action, action.help))
                action.help = argparse.SUPPRESS
        usage, epilog = self.usage, self.epilog
        self.usage = f"gdp {self.subcommand} [--config FILE] [options]"
        self.epilog = ("Shown: the project's options. --help-all also shows the trainer's (--trainer.*: devices, "
                       "precision, logger, ...)" + ("" if self.subcommand == "fit" else " and fit's") + ".")
        try:
            return super().format_help()
        finally:
            self.usage, self.epilog = usage, epilog
            for action, text in changed:
                action.help = text

    def error(self, message: str, ex: Optional[Exception] = None):
        if os.environ.get("GDP_DEBUG") or not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        print(f"gdp: error: {' '.join(str(message).split())} (see '{prog} --help')", file=sys.stderr)
        sys.exit(2)


#: the LightningModule and data module of each subcommand (restoration's for the others)
MODULES = {"fit": (FinetuneModule, FinetuneData)}


def classes_for(args: Sequence[str]) -> tuple:
    """The LightningModule and data module of the command line's subcommand."""
    subcommand = next((a for a in args if not a.startswith("-")), None)
    return MODULES.get(subcommand, (GDPModule, GDPDataModule))


def model_options(model_class: type) -> set:
    """The option names (``--model.*``) of ``model_class``: its own and, through ``**kwargs``, its bases'."""
    names = set()
    for cls in model_class.__mro__:
        if "__init__" in vars(cls) and issubclass(cls, GDPModule):
            names |= {n for n, p in inspect.signature(cls.__init__).parameters.items()
                      if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return names


def _task_operator(model: GDPModule):
    return model.degradation


def _image_size(model: GDPModule) -> int:
    return int(model.unet.image_size)


class GDPTrainer(Trainer):
    """Lightning's ``Trainer`` whose ``precision`` also takes ``auto`` (for ``gdp fit``): ``bf16-mixed`` on a GPU
    that computes bfloat16 and on a CPU that computes it natively (AVX512-BF16 or AMX), ``16-mixed`` on older
    GPUs, ``32-true`` elsewhere. Without native instructions a CPU emulates bfloat16, and ``bf16-mixed`` trains
    many times slower than ``32-true``."""

    def __init__(self, *args: Any, precision: Optional[Union[_PRECISION_INPUT, Literal["auto"]]] = None,
                 **kwargs: Any) -> None:
        """
        Args:
            precision: ``auto`` (the fastest that keeps the weights float32 on this device: ``bf16-mixed`` where
                bfloat16 is native, ``16-mixed`` on GPUs without it, else ``32-true``), or Lightning's: ``32-true``,
                ``bf16-mixed``, ``16-mixed``, ... Default: ``32-true``.
        """
        self.precision_reason: Optional[str] = None
        if precision == "auto":
            precision, self.precision_reason = training_precision(kwargs.get("accelerator", "auto"))
        super().__init__(*args, precision=precision, **kwargs)


class GDPCLI(LightningCLI):
    """LightningCLI with the project's model (:class:`GDPModule`, or :class:`FinetuneModule` for ``fit``), data
    module, writer and TensorBoard trajectory callback."""

    def __init__(self, args: Optional[Sequence[str]] = None, run: bool = True, verbose: bool = True):
        self.command = ["gdp", *(sys.argv[1:] if args is None else args)]
        self.verbose = verbose
        super().__init__(
            *classes_for(self.command[1:]),
            trainer_class=GDPTrainer,
            subclass_mode_model=False,
            subclass_mode_data=False,
            save_config_kwargs={"overwrite": True},
            trainer_defaults=TRAINER_DEFAULTS,
            parser_kwargs={"description": DESCRIPTION, "version": __version__},
            args=list(args) if args is not None else None,
            run=run,
            auto_configure_optimizers=False,
            parser_class=GDPArgumentParser,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # the data module learns the task's operator and the prior's size from the model, explicitly
        parser.link_arguments("model", "data.task_operator", compute_fn=_task_operator, apply_on="instantiate")
        if issubclass(self.datamodule_class, FinetuneData):  # fit crops at the prior's size
            parser.link_arguments("model", "data.image_size", compute_fn=_image_size, apply_on="instantiate")
        # the TensorBoard logger first: it sees each batch's images before the writer lets go of them
        parser.add_lightning_class_args(TrajectoryLogger, "trajectory")
        parser.add_lightning_class_args(RestorationWriter, "writer")
        parser.add_argument("--help-all", action=_FullHelp, help="Show every option, the trainer's included, and exit.")
        if not (sys.stdout.isatty() and sys.stderr.isatty()):  # a log file: a line per batch, no progress bars
            parser.set_defaults({"trainer.enable_progress_bar": False, "model.progress": False})

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        """The subcommands with the project's own one-line descriptions, and ``export`` (run by :func:`main`)."""
        self._subcommand_parsers = {}
        subcommands = parser.add_subcommands()
        for subcommand in self.subcommands():
            description = SUBCOMMANDS.get(subcommand, subcommand)
            options = {"description": description, **kwargs.get(subcommand, {})}
            subparser = self._prepare_subcommand_parser(self.trainer_class, subcommand, **options)
            subparser.subcommand = subcommand
            self._subcommand_parsers[subcommand] = subparser
            subcommands.add_subcommand(subcommand, subparser, help=description)
        if not self.verbose:  # test and validate: the command's summary instead of Lightning's result table
            for subparser in self._subcommand_parsers.values():
                if any(getattr(a, "dest", None) == "verbose" for a in subparser._actions):
                    subparser.set_defaults(verbose=False)
        export = GDPArgumentParser(description=EXPORT_HELP + " Usage: gdp export CHECKPOINT OUTPUT [--dtype float16] "
                                   "[--weights trained]")
        subcommands.add_subcommand("export", export, help=EXPORT_HELP)

    def _logs_follow_root_dir(self) -> None:
        """``--trainer.default_root_dir DIR``: the logger's relative ``save_dir`` (``logs`` in the configs) lies in
        DIR, so the TensorBoard logs, checkpoints and default outputs all go there."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = config.get("trainer") if config is not None else None
        root = trainer.get("default_root_dir") if trainer is not None else None
        if not root:
            return
        loggers = trainer.get("logger")
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            init = logger.get("init_args") if hasattr(logger, "get") else None
            save_dir = init.get("save_dir") if init is not None else None
            if isinstance(save_dir, (str, os.PathLike)) and not Path(save_dir).is_absolute():
                init["save_dir"] = str(Path(root) / save_dir)

    def before_instantiate_classes(self) -> None:
        self._logs_follow_root_dir()
        self._baseline_as_sanity_check()

    def _baseline_as_sanity_check(self) -> None:
        """``gdp fit`` with ``training.baseline_validation``: a fresh run's sanity check validates on the whole
        validation set (the baseline at step 0); a resumed run keeps the trainer's setting."""
        if self.subcommand != "fit":
            return
        config = self.config["fit"]
        training = config["model"].get("training")
        baseline = getattr(training, "baseline_validation", None)
        if baseline is None and hasattr(training, "get"):
            baseline = training.get("baseline_validation")
        if baseline and not config.get("ckpt_path"):
            config["trainer"]["num_sanity_val_steps"] = -1

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path``: the checkpoint's stored hyper-parameters fill in the model options (those this
        subcommand's model takes: a fit checkpoint's training settings are not a restoration's), but every option the
        user gave (in a config file or on the command line) wins over them; Lightning's own merge would let the
        checkpoint's values (a fit's sampler settings) silently replace the user's."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in ("last", "best", "hpc", "registry") or ckpt_path.startswith("registry:"):
            return  # Lightning's names for checkpoints it finds itself
        given = self.config[subcommand].get("model")
        defaults = self._parser(subcommand).get_defaults().get("model")
        hparams = read_fit_checkpoint(ckpt_path).get("hyper_parameters", {})
        accepted = model_options(self.model_class)
        hparams = {k: v for k, v in hparams.items() if k in accepted}
        if not hparams:
            return
        try:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)
        except SystemExit:
            sys.stderr.write("Parsing of ckpt_path hyperparameters failed!\n")
            raise
        if given is None or defaults is None:
            return
        merged = self.config[subcommand]["model"]
        default_values = dict(defaults.items())
        # on the command line: given even where the value is the default
        typed = {a[len("--model."):].split("=")[0] for a in self.command if a.startswith("--model.")}
        for key, value in given.items():
            named = any(key == t or key.startswith(t + ".") for t in typed)
            if named or key not in default_values or value != default_values[key]:
                merged[key] = value

    def _run_subcommand(self, subcommand: str) -> None:
        # the writer's run record: the command and the resolved config, told to it (not planted on the model)
        config = self.config.get(subcommand, self.config) if subcommand else self.config
        parser = self._parser(subcommand) if subcommand else self.parser
        try:
            dumped = parser.dump(config)
        except Exception:  # noqa: BLE001 - the record is a convenience, never a reason to fail
            dumped = None
        for callback in self.trainer.callbacks:
            if isinstance(callback, RestorationWriter):
                callback.describe_run(self.command, dumped)
        # log folders this run makes: a run stopped by a user error before it logged anything leaves none behind
        made = [(folder, existing_ancestor(folder)) for folder in self._log_folders() if not folder.exists()]
        try:
            super()._run_subcommand(subcommand)
        except USER_ERRORS:
            if self.trainer.is_global_zero:
                for folder, existed in made:
                    remove_unused_log_folder(folder, up_to=existed)
            raise

    def _log_folders(self) -> list:
        folders = []
        for logger in self.trainer.loggers:
            try:
                folder = logger.log_dir
            except Exception:  # noqa: BLE001 - a logger without a folder of its own
                continue
            if isinstance(folder, (str, os.PathLike)):
                folders.append(Path(folder))
        return folders


#: what the command reports in one line: every user-facing error is a :class:`GDPError` (options, inputs, data,
#: checkpoints, metrics that cannot run, a diverged restoration)
USER_ERRORS = (GDPError,)


def read_fit_checkpoint(path: str) -> dict:
    """The ``--ckpt_path`` checkpoint (safely loaded), or a one-line :class:`ConfigError` when the file is missing,
    not a checkpoint, or a plain state dict of weights rather than a checkpoint of ``gdp fit`` (Lightning's, with
    the training state)."""
    from .prior.checkpoint import CheckpointError, read_checkpoint

    try:
        checkpoint = read_checkpoint(path, expected="the last.ckpt of a gdp fit run")
    except CheckpointError as e:
        raise ConfigError(f"--ckpt_path {e}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint \
            or "pytorch-lightning_version" not in checkpoint:
        raise ConfigError(
            f"--ckpt_path {path}: not a checkpoint of gdp fit (a Lightning checkpoint such as "
            "logs/finetune/version_N/checkpoints/last.ckpt); to restore or fine-tune with the weights of a prior "
            f"file, give it as --model.prior.checkpoint {path}")
    return checkpoint


def export_main(argv: Sequence[str]) -> int:
    """``gdp export CHECKPOINT OUTPUT``: the prior's weights (the EMA's, when the checkpoint has them) as a plain
    guided-diffusion state dict, which loads with ``model.load_state_dict(torch.load(OUTPUT))`` in guided-diffusion
    and as ``--model.prior.checkpoint OUTPUT`` here."""
    import argparse

    import torch

    from .prior import export_checkpoint

    parser = argparse.ArgumentParser(
        prog="gdp export", description="Write the prior's weights of CHECKPOINT (the EMA weights of a gdp fit "
        "checkpoint) as a plain guided-diffusion state dict.")
    parser.add_argument("checkpoint", help="a gdp fit checkpoint (.ckpt) or any checkpoint the prior loads")
    parser.add_argument("output", help="the state dict file to write (.pt)")
    parser.add_argument("--dtype", choices=["float32", "float16"], default="float32",
                        help="value type of the weights (float16 halves the file; loads into float32 models)")
    parser.add_argument("--weights", choices=["ema", "trained"], default="ema",
                        help="of a gdp fit checkpoint: the EMA of the weights (default, where it has one) or the "
                        "trained weights themselves")
    parser.add_argument("--base_weight", type=float, default=0.0, metavar="W",
                        help="write (1 - W) * weights + W * the base prior's weights (weight-space interpolation "
                        "toward the prior the fit started from: keeps more of its domain, less of the new one's "
                        "detail); default 0")
    parser.add_argument("--base", default=None, metavar="PRIOR",
                        help="with --base_weight: the base prior's weights (default: the prior checkpoint the fit "
                        "started from, as the checkpoint records it)")
    parser.add_argument("--trust_checkpoint", action="store_true",
                        help="allow a checkpoint that needs arbitrary pickles (torch.load weights_only=False)")
    args = parser.parse_args(list(argv))
    path, info = export_checkpoint(args.checkpoint, args.output, dtype=getattr(torch, args.dtype),
                                   trust_checkpoint=args.trust_checkpoint, weights=args.weights,
                                   base_weight=args.base_weight, base=args.base)
    print(f"wrote {path}: {info}")
    return 0


def check_config_files(args: Sequence[str]) -> None:
    """Every ``--config FILE`` is a readable text file (the parser would print a traceback for a binary one)."""
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        else:
            continue
        path = Path(value)
        if not path.is_file():
            continue  # jsonargparse also takes inline YAML here, and names a missing file itself
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"--config {value}: not a text file; give a YAML config (configs/ has examples)") from None
        except OSError as e:
            raise ConfigError(f"--config {value}: cannot read it ({e.strerror or e})") from None


#: what the frameworks print that a run does not need: Lightning's tips and device lines (its INFO logs), and
#: deprecation notes about code that is not the user's; ``--verbose`` shows them
FRAMEWORK_LOGGERS = ("lightning.pytorch", "lightning.fabric")
FRAMEWORK_NOISE = (r".*isinstance\(treespec, LeafSpec\)", r"No seed found", r".*skip_none parameter was deprecated",
                   r"Total length of `DataLoader` across ranks is zero")  # a rerun with every input done


def verbose_flag(args: Sequence[str]) -> bool:
    """``--verbose`` on its own (not Lightning's ``--verbose true|false`` of test and validate)."""
    return any(a == "--verbose" and (i + 1 == len(args) or args[i + 1].lower() not in ("true", "false"))
               for i, a in enumerate(args))


def quiet_frameworks() -> None:
    """Hide the frameworks' chatter (not their warnings about the run): see :data:`FRAMEWORK_NOISE`."""
    import logging
    import warnings

    for name in FRAMEWORK_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in FRAMEWORK_NOISE:
        warnings.filterwarnings("ignore", message=pattern)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``gdp``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory(default=False)  # on with GDP_KEEP_FREED_MEMORY=1
    verbose = verbose_flag(args)
    if verbose:  # the bare flag is the command's; test and validate also pass it on to Lightning's result table
        args = [a for a in args if a != "--verbose"] + (["--verbose", "true"] if args[:1] in (["test"], ["validate"])
                                                         else [])
    else:
        quiet_frameworks()
    try:
        if args[:1] == ["export"]:
            return export_main(args[1:])
        check_config_files(args)
        if argv is None:  # LightningCLI reads the (possibly edited) command line itself
            sys.argv[1:] = args
        cli = GDPCLI(args=None if argv is None else args, verbose=verbose)
    except USER_ERRORS as e:
        if os.environ.get("GDP_DEBUG"):
            raise
        message = " ".join(str(e).split("\n")).strip() or type(e).__name__
        print(f"gdp: error: {message}", file=sys.stderr)
        return 2
    except SIGTERMException:
        print("gdp: stopped by SIGTERM; the finished outputs are kept and a rerun resumes", file=sys.stderr)
        return EXIT_TERMINATED
    return _failures(cli)


def _failures(cli: GDPCLI) -> int:
    """Exit status 3 with one line when some inputs have no output: their restoration diverged, or a file of theirs
    could not be used (their records say why; a rerun tries them again)."""
    trainer = getattr(cli, "trainer", None)
    writers = [cb for cb in getattr(trainer, "callbacks", []) if isinstance(cb, RestorationWriter)]
    failures = [f for w in writers for f in w.failures]
    if not failures:
        return 0
    failed = [text for w in writers for text in w.failed]
    reasons = {f.why for f in failures}
    diverged = any(f.diverged for f in failures)
    if len(failures) > 1 and len(reasons) == 1 and not diverged:  # one cause
        shown = f"{', '.join(f.name for f in failures[:3])}{' ...' if len(failures) > 3 else ''}, " \
                f"all for one reason: {next(iter(reasons))}"
    else:
        shown = "; ".join(failed[:3]) + (f"; and {len(failed) - 3} more" if len(failed) > 3 else "")
    advice = (" (diverged: a smaller --model.sampler.scale or --model.sampler.on_divergence retry)"
              if diverged else "")
    print(f"gdp: {len(failed)} input(s) have no output: {shown}. Their records in {writers[0].directory} say "
          f"why; fix them and rerun to restore only those{advice}", file=sys.stderr)
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
