"""The run-state of a stage's output folder: finished, unfinished, or to be built.

One protocol for every stage (distort, captioning, fine-tuning, scoring, evaluation) and
the pipeline, which simply runs each stage and lets it decide:

- Identity. A finished output is identified by its stage, the settings that change its
  content, and fingerprints of the inputs it read (texts, weights, score files). Settings
  that only say *where* things are (paths) or how work is chunked are left out, so a run
  folder continues under another spelling of its path or after being moved, and changed
  data re-runs every stage downstream of it.
- Up to date: the folder's record holds the same identity; the stage does nothing.
- Built beside, swapped in. New output is written into `.NAME.partial/` next to the output
  folder and swapped in whole by `finish`. A run that fails or is killed leaves the
  finished folder as it was; the partial folder is where the next run with the same
  identity resumes (its chunks, its checkpoints).
- Conflicts. A partial folder of other settings is refused (finish it, or overwrite=true);
  one whose only difference is its inputs is stale and discarded. A stage with nothing to
  resume (`resumable=False`, the evaluation) removes its partial folder when it fails. A finished output of
  other settings is replaced at `finish` unless the stage protects finished work (models,
  distorted data), which then needs overwrite=true.
- Folders that are not this stage's are refused before any work: a file, another stage's
  output (its record), or a folder of files semcal did not write.
- One writer: an exclusive lock beside the folder while a run builds it. Under a launcher
  (semcal.core.distributed) the main process takes the lock, prepares the partial folder and
  swaps it in; the other ranks write their shares into the same partial folder.

Tests crash a stage on purpose with SEMCAL_KILL_AT=POINT:N, which SIGKILLs the process the
N-th time it reaches `kill_point(POINT)` ("chunk", "checkpoint", ...); POINT:N@R kills only
rank R of a multi-process run.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from semcal.core import console, distributed
from semcal.core.config import config_to_dict
from semcal.core.errors import UserError
from semcal.store import files

log = logging.getLogger(__name__)

UNFINISHED_NAME = "semcal_unfinished.json"  # identity of the run building a partial folder
KILL_ENV = "SEMCAL_KILL_AT"
_kill_counts: collections.Counter[str] = collections.Counter()


def kill_point(point: str) -> None:
    """Test hook: SIGKILL this process the N-th time it gets here, when SEMCAL_KILL_AT=point:N
    (or point:N@R, rank R only)."""
    wanted, _, count = os.environ.get(KILL_ENV, "").partition(":")
    count, _, only_rank = count.partition("@")
    if wanted != point or (only_rank and int(only_rank) != distributed.rank()):
        return
    _kill_counts[point] += 1
    if _kill_counts[point] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def identity(stage: str, config: Any, inputs: dict[str, Any], ignore: Iterable[str] = ()) -> dict[str, Any]:
    """What makes an output what it is: stage, result-changing settings, input fingerprints.

    `ignore` names the settings that do not change the output (paths, chunk sizes, overwrite).
    """
    settings = config_to_dict(config) if not isinstance(config, dict) else dict(config)
    ignored = set(ignore)
    kept = {name: value for name, value in settings.items() if name not in ignored}
    # JSON round trip: tuples and lists, numpy and Python numbers compare alike after reading a record.
    return json.loads(json.dumps({"stage": stage, "settings": kept, "inputs": inputs}, default=files.json_default))


def differences(old: dict[str, Any] | None, new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(settings that differ, as "name: old there, new now"; names of inputs that changed)."""
    old = old or {}
    old_settings, new_settings = old.get("settings") or {}, new["settings"]
    settings = [
        f"{name}: {old_settings.get(name)!r} there, {value!r} now"
        for name, value in new_settings.items()
        if old_settings.get(name) != value
    ]
    old_inputs = old.get("inputs") or {}
    inputs = [name for name, value in new["inputs"].items() if old_inputs.get(name) != value]
    return settings, inputs


def _describe(settings: list[str], inputs: list[str]) -> str:
    parts = settings + ([f"changed inputs: {', '.join(inputs)}"] if inputs else [])
    return "; ".join(parts) or "no identity recorded"


class StageOutput:
    """The output folder of one stage run. Use:

        output = StageOutput("score", config.output_dir, what="score general_test.general")
        ...settings checked, inputs fingerprinted...
        if output.up_to_date(identity):
            return output.path
        with output.building(identity) as staging:
            ...write into staging (resumable files survive a kill)...
            output.finish(config, summary="1000 texts, 670/s", **record_details)

    The constructor checks the folder before any work: not a file, not another stage's
    output, not a folder of foreign files, writable.
    """

    def __init__(
        self,
        stage: str,
        output_dir: str | Path,
        what: str | None = None,
        *,
        overwrite: bool = False,
        protect: bool = False,
        keep_files: bool = False,
        resumable: bool = True,
        noun: str = "output",
    ):
        console.install_handler()  # a stage called from Python shows its lines; importing semcal sets up nothing
        if not str(output_dir).strip():
            raise UserError(f"{stage}: output_dir is empty: set the folder the output goes to.")
        self.stage = stage
        self.path = Path(output_dir).expanduser()
        if self.path.name in ("", ".", ".."):  # the output is built beside its folder and swapped in whole
            raise UserError(
                f"{stage}: the output folder {str(output_dir)!r} is a folder itself, not a new folder's name: name "
                "the folder to write, e.g. my_output (semcal builds it beside and swaps it in whole)."
            )
        self.what = what or stage
        self.overwrite = overwrite
        self.protect = protect
        self.keep_files = keep_files
        self.resumable = resumable
        self.noun = noun
        self.staging = self.path.with_name(f".{self.path.name}.partial")
        self.resumed = False
        self._identity: dict[str, Any] | None = None
        self._started = time.perf_counter()
        self._check_folder()

    # ---- before any work -----------------------------------------------------------------

    def _check_folder(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise UserError(f"output_dir={path} is a file, not a folder: choose a folder for the {self.stage} output.")
        if path.is_dir():
            record = self.record()
            if record is not None and record.get("stage") != self.stage:
                raise UserError(
                    f"output_dir={path} holds the output of the {record.get('stage')!r} stage (its "
                    f"{files.RECORD_NAME}); writing the {self.stage} output there would destroy it. Choose another "
                    "output_dir."
                )
            if record is None and not self.keep_files and any(path.iterdir()):
                shown = sorted(entry.name for entry in path.iterdir())[:5]
                raise UserError(
                    f"output_dir={path} exists and holds other files, not written by semcal ({', '.join(shown)}); "
                    "choose a new or empty folder."
                )
        check_writable(path.parent)

    def record(self) -> dict[str, Any] | None:
        try:
            return files.read_record(self.path)
        except (OSError, ValueError):
            return None

    def up_to_date(self, identity: dict[str, Any]) -> bool:
        """True (and one log line) when the folder holds a finished output of this identity.

        A finished output of other settings that this stage protects is refused here,
        before any work, unless overwrite=true.
        """
        self._identity = identity
        record = self.record()
        if record is None:
            return False
        if record.get("identity") == identity:
            log.info("%s: up to date, skipped (%s already holds this %s)", self.what, self.path, self.noun)
            return True
        settings, inputs = differences(record.get("identity"), identity)
        if self.protect and settings and not self.overwrite:
            raise UserError(
                f"{self.path} already holds a {self.noun} made with other settings ({_describe(settings, inputs)}). "
                "Choose another output_dir, or set overwrite=true to replace it."
            )
        log.debug("%s: %s will be replaced (%s)", self.what, self.path, _describe(settings, inputs))
        return False

    # ---- building ------------------------------------------------------------------------

    @contextlib.contextmanager
    def building(self, identity: dict[str, Any]) -> Iterator[Path]:
        """Hold the lock and yield the partial folder to write into (resumed if it is ours).

        Several ranks: the main process locks and prepares the folder, then all ranks get it.
        """
        if self._identity != identity and self.up_to_date(identity):
            raise RuntimeError("building() called for an output that is up to date")
        self._identity = identity
        if not distributed.is_main():
            distributed.barrier()  # the main process has prepared the partial folder
            self.resumed = distributed.broadcast(None)
            yield self.staging
            return
        with hold_lock(self.path):
            self._prepare_staging(identity)
            distributed.barrier()
            distributed.broadcast(self.resumed)
            try:
                yield self.staging
            except BaseException:
                if not self.resumable:  # nothing in it a rerun could continue from
                    shutil.rmtree(self.staging, ignore_errors=True)
                raise

    def _prepare_staging(self, identity: dict[str, Any]) -> None:
        state_path = self.staging / UNFINISHED_NAME
        if self.staging.exists():
            try:
                state = files.read_json(state_path) if state_path.exists() else None
            except (OSError, ValueError):
                state = None
            if state is not None and state.get("identity") == identity:
                self.resumed = True
                log.info("%s: resuming the unfinished run in %s", self.what, self.staging)
                return
            settings, inputs = differences(state and state.get("identity"), identity)
            if state is not None and settings and not self.overwrite:
                raise UserError(
                    f"{self.staging} holds an unfinished {self.stage} run with other settings "
                    f"({_describe(settings, inputs)}). Run with those settings to finish the interrupted run, set overwrite=true to "
                    f"discard it, or choose another output_dir."
                )
            log.info("%s: discarding an unfinished run of %s", self.what, _describe(settings, inputs))
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        files.write_json(state_path, {"stage": self.stage, "identity": identity})

    def finish(self, config: Any, summary: str = "", **details: Any) -> Path:
        """Write the record into the partial folder, swap it in for the old output, log one line.

        Several ranks: the main process does it; the others wait until it is done.
        """
        if not distributed.is_main():
            distributed.barrier()
            return self.path
        if self._identity is None or not self.staging.is_dir():
            raise RuntimeError("finish() is called inside building()")
        seconds = time.perf_counter() - self._started
        files.write_record(
            self.staging,
            self.stage,
            config_to_dict(config) if not isinstance(config, dict) else config,
            identity=self._identity,
            wall_time_s=round(seconds, 2),
            **details,
        )
        (self.staging / UNFINISHED_NAME).unlink(missing_ok=True)
        files.swap_in(self.staging, self.path, keep_files=self.keep_files)
        log.info("%s: done in %.1fs%s", self.what, seconds, f"; {summary}" if summary else "")
        distributed.barrier()
        return self.path


def check_writable(folder: str | Path) -> None:
    """Create `folder` if needed and prove a file can be written there, before any computing."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".semcal-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UserError(
            f"cannot write to {folder} ({err.strerror or err}): choose an output folder you can write to."
        ) from None


@contextlib.contextmanager
def hold_lock(folder: str | Path) -> Iterator[None]:
    """An exclusive lock on `folder` (a hidden file `.NAME.lock` beside it) for as long as the block runs.

    A second process asking for the same folder is refused at once; the lock goes with the
    process that holds it, so a killed run never leaves the folder locked. The lock file is
    removed when the block ends (a killed run leaves an unlocked one, which the next run takes).
    A run that opened the file just before its holder removed it finds that its lock is on a
    file no longer there and takes the new one, so two runs never both hold the lock.
    """
    folder = Path(folder)
    lock_path = folder.with_name(f".{folder.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: one writer is up to the user
        yield
        return
    for _ in range(100):  # each retry means another run removed the file between our open and our lock
        handle = open(lock_path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise UserError(
                f"{folder} is being written by {holder}; wait for it to finish or choose another output folder."
            ) from None
        if _same_file(handle, lock_path):
            break
        handle.close()
    else:
        raise UserError(f"{folder}: could not take the lock {lock_path}: remove it if no semcal run is writing there.")
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"semcal process {os.getpid()}")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            lock_path.unlink()  # removed while still locked: a run waiting on the old file retries
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def _same_file(handle: Any, path: Path) -> bool:
    """Whether the open `handle` is still the file at `path` (not removed or replaced meanwhile)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), os.stat(path))
    except OSError:
        return False
