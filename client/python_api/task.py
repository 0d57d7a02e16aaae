"""One task from Python: join it, run its aggregator or a participant, read its results and model."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from werkbund.client import home_files
from werkbund.client.python_api.progress import make_display
from werkbund.client.python_api.results import FinalModel, Result
from werkbund.client.python_api.runs import Run, StopFlag, StoppableChannel, TrackingProgress
from werkbund.platform.errors import InvalidInput

FINAL_RECORD_WAIT_S = 30.0

if TYPE_CHECKING:
    import pandas

    from werkbund.algorithms.data.dataset import Dataset


def as_dataset(data: Any, target: str | None = None, features: list[str] | None = None,
               kind: str = "classification", shard: str | None = None, missing: str = "drop") -> "Dataset":
    """A participant's local data from what a notebook has at hand.

    ``data`` may be a path (``.csv``, ``.parquet``, ``.npz``), a ``builtin:`` name
    (``builtin:digits``, ``builtin:mnist``), a pandas DataFrame (with ``target`` naming the label
    column), a pair of NumPy arrays ``(x, y)``, or a ``Dataset``. ``missing`` says what to do with
    missing values: ``"drop"`` the rows (the default), ``"mean"`` fill features with the column mean,
    ``"error"`` refuse; the columns and counts are named either way.
    """
    from werkbund.algorithms.data.dataset import DataError, Dataset
    from werkbund.algorithms.data.loading import finish_dataset, load_dataset
    from werkbund.algorithms.data.tables import dataset_from_arrays, dataset_from_frame

    if isinstance(features, str):
        features = [f.strip() for f in features.split(",") if f.strip()]
    if isinstance(data, Dataset):
        dataset = data
    elif isinstance(data, (str, Path)):
        return load_dataset(str(data), target=target, shard=shard, features=features, kind=kind, missing=missing)
    elif isinstance(data, tuple) and len(data) == 2:
        dataset = dataset_from_arrays(data[0], data[1], features=features, target=target or "y", kind=kind)
    elif hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a pandas DataFrame
        if not target:
            raise DataError("a DataFrame needs the name of its target column (target=...)")
        dataset = dataset_from_frame(data, target, features=features, kind=kind, missing=missing,
                                     source="DataFrame")
    else:
        raise DataError(f"cannot use {type(data).__name__} as data: give a file path, a builtin: name, "
                        "a pandas DataFrame or a pair of arrays (x, y)")
    return finish_dataset(dataset, kind, shard, "the data")


def _checked_algorithm(channel):
    """The task's algorithm as installed here, its definition checked and the declaration's defaults
    filled into the channel's copy (a task created without a werkbund client may lack them)."""
    from werkbund.client.definitions import task_algorithm

    algorithm, checked = task_algorithm(channel.definition)
    channel.definition.update({k: v for k, v in checked.items() if k not in channel.definition})
    return algorithm


class Task:
    """A task on the platform, from the point of view of the session that made this handle.

    Get one with ``session.task(name)`` or ``session.create_task(...)``. The creator runs
    :meth:`aggregate`; a participant :meth:`join`\\ s and :meth:`participate`\\ s. Both can read
    :meth:`results`, :meth:`model` and :meth:`verify_ledger`.
    """

    def __init__(self, session, name: str):  # a werkbund.Session (session.py makes Task handles)
        self.session = session
        self.name = name
        self._info = session.info(name)  # TaskNotFound if there is none

    # ----------------------------------------------------------------- facts
    def info(self) -> dict:
        """The task's details now: status, definition, participants and schema (for members)."""
        self._info = self.session.info(self.name)
        return self._info

    @property
    def status(self) -> str:
        """``CREATED``, ``STARTED``, ``COMPLETE`` or ``FAILED`` (asked from the platform)."""
        return self.info()["status"]

    @property
    def definition(self) -> dict:
        return self._info["definition"]

    @property
    def role(self) -> str | None:
        """``"creator"``, ``"participant"`` or None (neither)."""
        return self.info().get("role")

    def rounds(self) -> list[dict]:
        """The round records as the platform keeps them (members and the creator only)."""
        return self.session.client.rounds(self.name)

    @property
    def history(self) -> "pandas.DataFrame":
        """The rounds so far as a DataFrame (see ``Result.history``)."""
        from werkbund.client.python_api.results import rounds_frame

        return rounds_frame(self.rounds())

    def results(self) -> Result:
        """The results of this task as recorded so far (a :class:`Result`), e.g. for a task that ran elsewhere."""
        role = self.role or "observer"
        return Result(self, "aggregator" if role == "creator" else role,
                      local_data=self.session._joined.get(self.name))

    # ------------------------------------------------------------ membership
    def join(self, data: Any, target: str | None = None, features: list[str] | str | None = None,
             kind: str = "classification", shard: str | None = None, hide_size: bool = False,
             missing: str | None = None) -> dict:
        """Join the task with your local data; only its schema summary is sent.

        Args:
            data: a path (``.csv``, ``.parquet``, ``.npz``), ``"builtin:digits"``, a pandas DataFrame
                or ``(x, y)`` arrays. The rows never leave this machine.
            target: the label column (a CSV, Parquet file or DataFrame).
            features: the feature columns (default: all but the target).
            kind: ``"classification"`` (default) or ``"regression"`` (a numeric target).
            shard: use part i of n of the data, e.g. ``"1/2"`` (for demos).
            hide_size: do not tell the platform how many rows you have.
            missing: ``"drop"`` rows with missing values, ``"mean"`` (fill features with the column
                mean), ``"keep"`` (NaN stays) or ``"error"``; default: what the task's algorithm
                declares (``drop``, or ``keep`` for an algorithm that counts them).

        Raises ``AlgorithmNotInstalled`` (naming the distribution to install) when the task's
        algorithm is not installed here, ``InvalidInput`` when the algorithm installed here refuses
        the task's definition; nothing is sent then.

        Returns the platform's answer. A path or ``builtin:`` name is remembered under
        ``WERKBUND_HOME`` (as ``werkbund join`` does), so ``participate()`` and ``werkbund
        participate`` find it later; a DataFrame or arrays are kept in this session only.
        """
        from werkbund.client.definitions import task_algorithm

        algorithm, _ = task_algorithm(self.info()["definition"])  # refused here if not installed, naming it
        missing = missing or algorithm.missing_values
        dataset = as_dataset(data, target=target, features=features, kind=kind, shard=shard, missing=missing)
        answer = self.session.client.join_task(self.name, dataset.schema(share_size=not hide_size))
        self.session._joined[self.name] = dataset
        if isinstance(data, (str, Path)):
            spec = str(data) if str(data).startswith("builtin:") else str(Path(data).expanduser().resolve())
            feature_list = [f.strip() for f in features.split(",")] if isinstance(features, str) else features
            home_files.save_join(self.session.url, self.session.name, self.name,
                                 {"data": spec, "target": target, "features": feature_list, "shard": shard,
                             "kind": kind, "missing": missing})
        self.info()  # the handle shows the new member count
        return answer

    @property
    def joined_data(self) -> "Dataset | None":
        """The local data joined with in this session (None if you joined elsewhere or not at all)."""
        return self.session._joined.get(self.name)

    def leave(self) -> dict:
        """Leave the task (only before it starts)."""
        self.session._joined.pop(self.name, None)
        answer = self.session.client.leave_task(self.name)
        self.info()
        return answer

    def delete(self) -> dict:
        """Delete the task (its creator only, not while it runs)."""
        return self.session.client.delete_task(self.name)

    # ------------------------------------------------------------------ runs
    def aggregate(self, background: bool = False, holdout: Any = None, target: str | None = None,
                  progress: bool | str = True, quorum_timeout: float | None = None,
                  checkpoint_dir: str | Path | None = None, resume: bool = False,
                  results: str | Path | None = None) -> Result | Run:
        """Run the aggregator of a task you created: wait for the quorum, then run every round.

        Args:
            background: return a :class:`Run` at once (poll ``run.progress``, ``run.wait()``,
                ``run.stop()``) instead of blocking until the task ends.
            holdout: your own held-out data (anything :meth:`join` takes) to evaluate each round's model.
            target: the label column of ``holdout``.
            progress: ``True`` (bars in Jupyter and on a terminal, lines elsewhere), ``False``, or
                ``"notebook"``, ``"terminal"``, ``"lines"``.
            quorum_timeout: give up if the quorum has not joined in this many seconds.
            checkpoint_dir: where the checkpoint after every round goes (default
                ``WERKBUND_HOME/checkpoints/TASK``).
            resume: go on with a STARTED task from its last checkpoint.
            results: a folder for the tables and figures (``Result.save``), if wanted.

        Returns the :class:`Result` (foreground) or a :class:`Run` (background). Raises
        ``TaskFailure`` when the task fails (the reason is recorded on the platform too).
        """
        from werkbund.algorithms.engine.checkpoint import CheckpointError

        channel = self.session.client.aggregator(self.name)  # refuses anyone but the creator
        algorithm = _checked_algorithm(channel)
        holdout_data = None if holdout is None else as_dataset(holdout, target=target)
        checkpoints = Path(checkpoint_dir) if checkpoint_dir else home_files.home() / "checkpoints" / self.name

        def work(tracker, channel=channel) -> Result:
            aggregator = algorithm.aggregator(channel, holdout=holdout_data, progress=tracker,
                                              quorum_timeout=quorum_timeout, checkpoint_dir=checkpoints)
            try:
                outcome = aggregator.run(resume=resume)
            except CheckpointError as exc:
                raise InvalidInput(f"cannot resume task {self.name!r}: {exc}") from None
            self._keep_final_checkpoint(tracker)
            result = Result(self, "aggregator", outcome)
            if results:
                result.save(results)
                aggregator.write_results(Path(results))  # an algorithm's own files (plots, reports)
            return result

        return self._launch("aggregator", work, channel, background, progress)

    def participate(self, data: Any = None, target: str | None = None, background: bool = False,
                    progress: bool | str = True, hold_back: list[str] | None = None,
                    out: str | Path | None = None, idle_timeout: float | None = None,
                    options: dict | None = None) -> Result | Run:
        """Train in a task you joined, round after round, until the final model arrives.

        Args:
            data: your data, if not the data you joined with (anything :meth:`join` takes).
            target: its label column.
            background: return a :class:`Run` at once instead of blocking.
            progress: as for :meth:`aggregate`.
            hold_back: columns to keep to yourself (algorithms that declare the participant option
                ``hold_back``; ``werkbund.algorithms(NAME)`` lists an algorithm's options).
            out: where to write your copy of the final model (default
                ``WERKBUND_HOME/models/USER/TASK`` with the algorithm's model suffix, e.g. ``.keras``).
            idle_timeout: give up after this many seconds without a message from the aggregator.
            options: other participant options the algorithm declares, by name.

        Returns the :class:`Result` (with ``evaluation``: the final model on your own test rows) or a
        :class:`Run`. Raises ``TaskEnded`` when the task fails or disappears.
        """
        from werkbund.algorithms.data.dataset import DataError
        from werkbund.client.definitions import participant_options
        from werkbund.platform.definition import column_difference, describe_column_difference

        channel = self.session.client.participant(self.name)  # refuses anyone who has not joined
        algorithm = _checked_algorithm(channel)
        options = dict(options or {})
        if hold_back:
            options["hold_back"] = list(hold_back)
        options = participant_options(algorithm, options)
        dataset = self._participant_data(data, target)
        agreed = (self.info().get("schema") or {}).get("features")
        if agreed and list(agreed) != list(dataset.features):
            missing, extra = column_difference(dataset.features, agreed)
            if missing or extra:
                raise DataError(describe_column_difference(missing, extra))
            dataset = dataset.in_order(agreed)  # the same columns, in the order the model was built for
        definition = channel.definition
        train, test = dataset.split(definition.get("test_size", 0.2), definition.get("seed", 0))
        out = str(out or home_files.home() / "models" / self.session.name / f"{self.name}{algorithm.model_suffix}")
        if idle_timeout is not None:
            options["idle_timeout"] = idle_timeout

        def work(tracker, channel=channel) -> Result:
            outcome = algorithm.participant(channel, train, test, progress=tracker, out_model=out, **options).run()
            # the aggregator records the last round once every final evaluation is in: wait for it
            # (briefly), so the Result's tables are whole when the run returns
            deadline = time.monotonic() + FINAL_RECORD_WAIT_S
            while channel.info()["status"] == "STARTED" and time.monotonic() < deadline:
                time.sleep(0.2)
            self._keep_final_checkpoint(tracker)
            return Result(self, "participant", outcome, local_data=dataset,
                          model_path=outcome.get("model_path", out))

        return self._launch("participant", work, channel, background, progress)

    def _missing_default(self) -> str:
        from werkbund.client.definitions import task_algorithm

        return task_algorithm(self._info["definition"])[0].missing_values

    def _participant_data(self, data, target) -> "Dataset":
        if data is not None:
            choice = home_files.load_join(self.session.url, self.session.name, self.name) or {}
            return as_dataset(data, target=target or choice.get("target"), kind=choice.get("kind") or "classification",
                              missing=choice.get("missing") or self._missing_default())
        if self.name in self.session._joined:
            return self.session._joined[self.name]
        choice = home_files.load_join(self.session.url, self.session.name, self.name)
        if not choice or not choice.get("data"):
            raise InvalidInput(f"no data chosen for task {self.name!r}: join it with data, or give data= here")
        return as_dataset(choice["data"], target=choice.get("target"), features=choice.get("features"),
                          kind=choice.get("kind") or "classification", shard=choice.get("shard"),
                          missing=choice.get("missing") or self._missing_default())

    def _launch(self, role: str, work, channel, background: bool, progress) -> Result | Run:
        display = make_display(progress, prefix=f"{self.session.name}: " if background else "")
        flag = StopFlag()
        if not background:
            tracker = TrackingProgress(display, flag, channel.definition.get("rounds"))
            try:
                return work(tracker)
            finally:
                tracker.close()
        on_stop = None
        if role == "participant":  # so the aggregator need not wait for the round's deadline
            def on_stop(channel=channel):
                channel.send("error", b"", round=-1, reason="participant stopped by its user", leaving=True)
        stoppable = StoppableChannel(channel, flag, on_stop)
        return Run(role, self.name, lambda tracker: work(tracker, channel=stoppable), display, flag,
                   channel.definition.get("rounds")).start()

    # ---------------------------------------------------------------- model
    def model(self, check_ledger: bool = True) -> FinalModel:
        """The final model of a COMPLETE task (creator and participants), with its metadata.

        With ``check_ledger`` (the default, when you have an identity key) the task's ledger is
        verified and the model's sha256 compared with the ``task_finished`` entry: see
        ``FinalModel.ledger`` and ``FinalModel.ledger_matches``.
        """
        data, info = self.session.client.get_model(self.name)
        final = FinalModel(self.name, data, info)
        if check_ledger and self.session.client.identity is not None:
            report, bundle = self.verify_ledger(return_bundle=True)
            final.check_ledger(bundle, report)
        return final

    def download_model(self, path: str | Path | None = None) -> Path:
        """Write the final model to ``path`` (default ``TASK.keras`` or the algorithm's suffix) and its
        metadata beside it (``path.json``); returns the path."""
        final = self.model(check_ledger=False)
        if path is None:
            suffix = ".keras" if final.bytes[:2] == b"PK" else ".json" if final.bytes[:1] == b"{" else ".safetensors"
            path = f"{self.name}{suffix}"
        return final.save(path)

    def _keep_final_checkpoint(self, progress) -> None:
        """Once the task is COMPLETE: verify its ledger and keep the platform-signed checkpoint that
        covers the final model's entry under WERKBUND_HOME (cosigned), so that a platform that later
        rolls the ledger back or drops that entry fails this member's ``ledger verify``."""
        from werkbund.client.ledger import LedgerError

        if getattr(self.session.client, "identity", None) is None or self.info()["status"] != "COMPLETE":
            return
        report = self.verify_ledger()
        if not report.ok:
            raise LedgerError(f"the ledger of task {self.name!r} does not verify after the task: {report.problems}")
        size = (home_files.load_ledger_view(self.session.url, self.session.name, self.name) or {}).get("checkpoint", {})
        progress.message(f"ledger verified; kept checkpoint {size.get('size')} covering the final model")

    def verify_ledger(self, return_bundle: bool = False):
        """Verify the task's ledger as ``werkbund ledger verify`` does (members only).

        Checks every signature, seq and prev link, the Merkle root, the signed checkpoint, and
        consistency with what you saw last time; cosigns the checkpoint when it verifies. Returns
        the report (``report.ok``, ``report.problems``, ``print(report)``).
        """
        from werkbund.client.ledger import verify_task_ledger

        report, bundle = verify_task_ledger(self.session.client, self.session.url, self.name)
        return (report, bundle) if return_bundle else report

    def __repr__(self) -> str:
        i = self._info
        return (f"<werkbund.Task {self.name!r}: {i['status']}, {i['algorithm']}, POM {i.get('pom', 1)}, "
                f"{i['joined']} joined of quorum {i['quorum']}>")
