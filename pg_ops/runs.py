"""How `pg-ops` runs a job: as a run of the pg-ops code location in a Dagster deployment (the
way the UI launches one), or, when no deployment answers and the cluster is local, in this
process.

Where a run goes:

1. `--dagster-url URL` or PG_OPS_DAGSTER_URL: that deployment's webserver, through its GraphQL
   API. If it does not answer, or no daemon serves its run queue (the run would never start),
   pg-ops refuses: the operator named a deployment, a run anywhere else would be a surprise.
2. `--in-process`: this process, on the instance DAGSTER_HOME names. The escape hatch for the
   day the deployment itself is down and a failover cannot wait.
3. Otherwise the local deployment of `make run`: the webserver at the URL `make run` wrote to
   DAGSTER_HOME/pg-ops-webserver (default http://127.0.0.1:3000), used when it answers, serves
   THIS instance (its storage is our DAGSTER_HOME) and its daemon runs.
4. If there is none, a cluster on the local platform runs in this process and pg-ops says on
   stderr that the run queue, the per-cluster topology limit and the run-failure alert were
   bypassed (the lock in the desired-state record still holds: it is the first layer of single
   flight). `make run` deploys before its webserver is up and the test suite runs the CLI
   without one; both rely on this. A Kubernetes cluster is refused instead: its runs belong to
   its deployment, not to the SQLite instance of the laptop the command was typed on.

Through a deployment, pg-ops follows the run to its end (status polled), prints its one-line
failure reason (the traceback with --verbose) and reads the figures each command prints from
the run's events: step output metadata and asset materialization metadata. Runs in process
are read from the same events, so commands see one `RunOutcome` either way.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pg_ops.errors import PgOpsError, first_line

if TYPE_CHECKING:  # dagster is imported when a run is launched, not when pg-ops starts
    from dagster import RunConfig
    from dagster_graphql import DagsterGraphQLClient

# One code location name everywhere: the Helm chart names it after its user deployment, and a
# Kubernetes object name cannot hold "_" (workspace.yaml and pyproject.toml say the same).
CODE_LOCATION = "pg-ops"
REPOSITORY = "__repository__"  # the repository Dagster makes of a Definitions object
CLUSTERS_JOB = "deploy_cluster"  # its partitions are the clusters the loaded code location knows
URL_ENV = "PG_OPS_DAGSTER_URL"
LOCAL_URL = "http://127.0.0.1:3000"
LOCAL_URL_FILE = "pg-ops-webserver"  # in DAGSTER_HOME, written by `make run`
TERMINAL = ("SUCCESS", "FAILURE", "CANCELED")
POLL_SECONDS = 0.5
QUEUE_NOTICE_SECONDS = 3.0
HTTP_TIMEOUT = 30


def notice(text: str) -> None:
    print(f"pg-ops: {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Options:
    """Where runs go (from the command line)."""

    dagster_url: str | None = None
    in_process: bool = False
    verbose: bool = False


@dataclass(frozen=True)
class JobLaunch:
    job: str
    cluster: str
    run_config: RunConfig | None = None  # built by the job's defs module (failover_run_config, ...)
    tags: dict = field(default_factory=dict)
    partition_key: str | None = None
    asset_selection: tuple[tuple[str, ...], ...] | None = None  # asset key paths

    def config_dict(self) -> dict:
        """The run config as Dagster's dict: what a submission takes (in process or over GraphQL),
        the only place the typed config is spelled as a dict."""
        if self.run_config is None:
            return {}
        return {part: value for part, value in self.run_config.to_config_dict().items() if value}


@dataclass
class RunOutcome:
    run_id: str
    status: str  # SUCCESS | FAILURE | CANCELED
    where: str  # the deployment's URL, or "in process"
    outputs: dict[str, dict] = field(default_factory=dict)  # step key -> output metadata
    materializations: dict[str, dict] = field(default_factory=dict)  # "a/b/c" -> metadata
    reason: str | None = None
    traceback: str | None = None

    @property
    def success(self) -> bool:
        return self.status == "SUCCESS"

    def output_for_node(self, op: str) -> dict:
        return self.outputs.get(op, {})

    def materialization(self, asset_key_path: list[str] | tuple[str, ...]) -> dict:
        return self.materializations.get("/".join(asset_key_path), {})

    @property
    def link(self) -> str:
        return f"{self.where}/runs/{self.run_id}" if self.where.startswith("http") else "in process"


def launch_tags(launch: JobLaunch) -> dict[str, str]:
    from pg_ops.defs.partitions import CLUSTER_TAG

    return {CLUSTER_TAG: launch.cluster, "pg_ops/launched_by": f"pg-ops {getpass.getuser()}@{socket.gethostname()}",
            **launch.tags}


# -- errors as one line ------------------------------------------------------------------------
WRAPPERS = ("DagsterExecutionStepExecutionError", "DagsterUserCodeExecutionError")


@dataclass(frozen=True)
class ErrorLink:
    """One error of a failure's chain (the error, then its cause, ...), however Dagster handed it
    over: a SerializableErrorInfo in process and to the run-failure sensor, a PythonError over GraphQL."""

    class_name: str
    message: str
    stack: str = ""


def own_error(chain: list[ErrorLink]) -> ErrorLink:
    """The failed step's own error: the first of `chain` that is not one of Dagster's wrappers
    around it (else the last). The one unwrap of a Dagster failure: `pg-ops` and the run-failure
    alert (pg_ops/defs/health.py) both read a failure through it."""
    return next((link for link in chain if link.class_name not in WRAPPERS), chain[-1])


def chain_of_error_info(error) -> list[ErrorLink]:
    """The chain of a Dagster SerializableErrorInfo (`.cause` after `.cause`)."""
    chain = []
    while error is not None:
        chain.append(ErrorLink(error.cls_name or "", error.message or "", "".join(error.stack or [])))
        error = error.cause
    return chain


def chain_of_python_error(error: dict) -> list[ErrorLink]:
    """The chain of a GraphQL PythonError (the error, then its `errorChain`)."""
    return [ErrorLink(e.get("className") or "", e.get("message") or "", "".join(e.get("stack") or []))
            for e in [error] + [link["error"] for link in error.get("errorChain") or []]]


def one_line(message: str | None, class_name: str | None = None) -> str:
    """The first line of an error message, without the 'module.Class: ' Python puts in front."""
    text = (message or "").strip()
    if class_name:
        text = re.sub(rf"^(?:[A-Za-z_]\w*\.)*{re.escape(class_name)}: ", "", text)
    return first_line(text) or "the run failed"


# -- in process --------------------------------------------------------------------------------
def run_in_process(launch: JobLaunch, verbose: bool) -> RunOutcome:
    from dagster import AssetKey, DagsterInstance

    from pg_ops import settings

    settings.ensure_dagster_home()
    from pg_ops.definitions import build_defs
    from pg_ops.spec import load_specs

    # Dagster's per-event console log (tracebacks included) goes to stderr only with --verbose.
    run_config = {**launch.config_dict(),
                  "loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "CRITICAL"}}}}
    kwargs: dict = {}
    if launch.partition_key is not None:
        kwargs["partition_key"] = launch.partition_key
    if launch.asset_selection is not None:
        kwargs["asset_selection"] = [AssetKey(list(path)) for path in launch.asset_selection]
    with DagsterInstance.get() as instance:
        # Built from the specs as they are now (the module-level `defs` froze them at import), and
        # inside the instance's block: resolving Definitions reads the current instance's state
        # storage, and after an earlier run in this process (`with` leaves the disposed one current)
        # that would be a dead instance ("Attempted to resolve undefined DagsterInstance weakref").
        job = build_defs(load_specs()).resolve_job_def(launch.job)
        result = job.execute_in_process(instance=instance, run_config=run_config, tags=launch_tags(launch),
                                        raise_on_error=False, **kwargs)
    return outcome_of_result(result)


def outcome_of_result(result) -> RunOutcome:
    outputs = {ev.step_key: {k: v.value for k, v in ev.step_output_data.metadata.items()}
               for ev in result.all_events if ev.is_successful_output}
    materializations = {"/".join(ev.materialization.asset_key.path):
                        {k: v.value for k, v in ev.materialization.metadata.items()}
                        for ev in result.get_asset_materialization_events()}
    outcome = RunOutcome(result.run_id, "SUCCESS" if result.success else "FAILURE", "in process", outputs,
                         materializations)
    if not result.success:
        outcome.reason, outcome.traceback = failure_of_events(result.all_events)
    return outcome


def failure_of_events(events) -> tuple[str, str | None]:
    """A failed run's reason in one line (the step's own error, not its wrappers) and its traceback."""
    for event in events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            err = event.step_failure_data.error
            own = own_error(chain_of_error_info(err))
            return one_line(own.message, own.class_name), err.to_string()
    for event in events:
        if event.is_failure and event.message:
            return one_line(event.message), None
    return "the run failed", None


# -- through a deployment's GraphQL API ----------------------------------------------------------
META_FIELDS = """
fragment Meta on MetadataEntry { __typename label
  ... on TextMetadataEntry { text } ... on IntMetadataEntry { intValue intRepr }
  ... on FloatMetadataEntry { floatValue floatRepr } ... on BoolMetadataEntry { boolValue }
  ... on JsonMetadataEntry { jsonString } ... on PathMetadataEntry { path }
  ... on MarkdownMetadataEntry { mdStr } ... on UrlMetadataEntry { url }
  ... on TimestampMetadataEntry { timestamp } }
fragment Err on PythonError { message className stack errorChain { error { message className stack } } }
"""
EVENTS_QUERY = META_FIELDS + """
query($runId: ID!, $cursor: String) { runOrError(runId: $runId) { __typename
  ... on Run { eventConnection(afterCursor: $cursor, limit: 500) { cursor hasMore events { __typename
    ... on MessageEvent { message level }
    ... on StepEvent { stepKey }
    ... on ExecutionStepOutputEvent { outputName metadataEntries { ...Meta } }
    ... on MaterializationEvent { assetKey { path } metadataEntries { ...Meta } }
    ... on ExecutionStepFailureEvent { error { ...Err } }
    ... on RunFailureEvent { error { ...Err } } } } }
  ... on Error { message } } }
"""
PARTITION_KEYS_QUERY = """
query($selector: PipelineSelector!) { pipelineOrError(params: $selector) { __typename
  ... on Pipeline { partitionKeysOrError { partitionKeys } }
  ... on Error { message } } }
"""
PARTITION_TAGS_QUERY = """
query($selector: RepositorySelector!, $set: String!, $key: String!) {
  partitionSetOrError(repositorySelector: $selector, partitionSetName: $set) { __typename
    ... on PartitionSet { partition(partitionName: $key) { tagsOrError { __typename
      ... on PartitionTags { results { key value } } ... on Error { message } } } }
    ... on Error { message } } }
"""
INSTANCE_QUERY = """
{ instance { info daemonHealth { daemonStatus(daemonType: "QUEUED_RUN_COORDINATOR") { required healthy } } } }
"""
FAILED_QUERY = """
query($filter: RunsFilter) { runsOrError(filter: $filter, limit: 50) { ... on Runs {
  results { runId jobName status updateTime tags { key value } } } } }
"""
RUNNING_QUERY = """
query($filter: RunsFilter) { runsOrError(filter: $filter) { ... on Runs { results { runId jobName status } } } }
"""


def metadata_value(entry: dict):
    for key in ("text", "boolValue", "path", "mdStr", "url", "timestamp"):
        if key in entry:
            return entry[key]
    if "intRepr" in entry:
        return entry["intValue"] if entry.get("intValue") is not None else int(entry["intRepr"])
    if "floatRepr" in entry:
        return entry["floatValue"] if entry.get("floatValue") is not None else float(entry["floatRepr"])
    if "jsonString" in entry:
        return json.loads(entry["jsonString"])
    return None


def _metadata(entries: list[dict]) -> dict:
    return {e["label"]: metadata_value(e) for e in entries}


def _error_text(error: dict) -> tuple[str, str]:
    """(one-line reason, traceback) of a GraphQL PythonError, unwrapping Dagster's wrappers."""
    chain = chain_of_python_error(error)
    trace = "\n".join(link.stack + link.message for link in chain)
    own = own_error(chain)
    return one_line(own.message, own.class_name), trace


def outcome_of_events(run_id: str, status: str, where: str, events: list[dict]) -> RunOutcome:
    outcome = RunOutcome(run_id, status, where)
    for ev in events:
        kind = ev["__typename"]
        if kind == "ExecutionStepOutputEvent":
            outcome.outputs[ev["stepKey"]] = _metadata(ev["metadataEntries"])
        elif kind == "MaterializationEvent" and ev.get("assetKey"):
            outcome.materializations["/".join(ev["assetKey"]["path"])] = _metadata(ev["metadataEntries"])
    if status != "SUCCESS":
        failures = [ev for ev in events if ev["__typename"] == "ExecutionStepFailureEvent" and ev.get("error")]
        failures += [ev for ev in events if ev["__typename"] == "RunFailureEvent" and ev.get("error")]
        if failures:
            outcome.reason, outcome.traceback = _error_text(failures[0]["error"])
        else:
            ends = [ev for ev in events if ev["__typename"] in ("RunFailureEvent", "RunCanceledEvent")]
            outcome.reason = one_line(ends[-1]["message"]) if ends else f"the run ended {status}"
    return outcome


def serves_home(info: str | None) -> Path | None:
    """The DAGSTER_HOME of the instance a webserver describes (its local artifact storage)."""
    import yaml

    try:
        base = (((yaml.safe_load(info or "") or {}).get("local_artifact_storage") or {})
                .get("config", {}).get("base_dir"))
    except (yaml.YAMLError, AttributeError):
        return None
    return Path(base).resolve() if base else None


class Deployment:
    """A Dagster webserver (and, behind it, its daemon and instance), reached over HTTP."""

    def __init__(self, url: str):
        parts = urlsplit(url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PgOpsError(f"Dagster URL {url!r} is not an http(s) URL (--dagster-url / {URL_ENV})")
        self.url = url.rstrip("/")
        self._parts = parts
        self._hostname: str = parts.hostname
        self._client: DagsterGraphQLClient | None = None

    @property
    def client(self) -> DagsterGraphQLClient:
        from dagster_graphql import DagsterGraphQLClient

        if self._client is None:
            self._client = DagsterGraphQLClient(self._hostname, port_number=self._parts.port,
                                                use_https=self._parts.scheme == "https",
                                                path_prefix=self._parts.path, timeout=HTTP_TIMEOUT)
        return self._client

    # -- plain HTTP ----------------------------------------------------------------------------
    def answers(self) -> bool:
        import requests

        try:
            reply = requests.get(f"{self.url}/server_info", timeout=3)
            return reply.ok and "dagster_version" in reply.json()
        except (requests.RequestException, ValueError):
            return False

    def query(self, text: str, variables: dict | None = None) -> dict:
        import requests

        try:
            reply = requests.post(f"{self.url}/graphql", json={"query": text, "variables": variables or {}},
                                  timeout=HTTP_TIMEOUT)
            body = reply.json()
        except requests.RequestException as exc:
            raise PgOpsError(f"the Dagster webserver at {self.url} does not answer: {type(exc).__name__}") from exc
        except ValueError:
            raise PgOpsError(f"the Dagster webserver at {self.url} answered HTTP {reply.status_code}, "
                             f"not GraphQL") from None
        if body.get("errors"):
            raise PgOpsError(f"the Dagster webserver at {self.url}: {one_line(body['errors'][0].get('message'))}")
        return body["data"]

    # -- is it usable --------------------------------------------------------------------------
    def unusable_because(self, dagster_home: Path | None = None) -> str | None:
        """Why runs cannot go here (None: they can). With `dagster_home`, it must also be the
        deployment of that instance (the local one)."""
        if not self.answers():
            return f"no Dagster webserver answers at {self.url}"
        instance = self.query(INSTANCE_QUERY)["instance"]
        if dagster_home is not None and serves_home(instance.get("info")) != dagster_home:
            return f"the Dagster webserver at {self.url} serves another instance than DAGSTER_HOME={dagster_home}"
        queue = instance["daemonHealth"]["daemonStatus"]
        if queue["required"] and not queue["healthy"]:
            return f"no Dagster daemon serves the run queue of {self.url} (a run would never start)"
        return None

    # -- the code location ---------------------------------------------------------------------
    def partition_keys(self, job: str) -> list[str]:
        selector = {"repositoryLocationName": CODE_LOCATION, "repositoryName": REPOSITORY, "pipelineName": job}
        found = self.query(PARTITION_KEYS_QUERY, {"selector": selector})["pipelineOrError"]
        if "partitionKeysOrError" not in found:
            raise PgOpsError(f"the Dagster deployment at {self.url} has no job {job} in code location "
                             f"{CODE_LOCATION}: {one_line(found.get('message'))}")
        return found["partitionKeysOrError"]["partitionKeys"]

    def reload(self) -> None:
        from dagster_graphql import ReloadRepositoryLocationStatus

        info = self.client.reload_repository_location(CODE_LOCATION)
        if info.status != ReloadRepositoryLocationStatus.SUCCESS:
            raise PgOpsError(f"reloading code location {CODE_LOCATION} at {self.url} failed: "
                             f"{one_line(info.message)}")

    def require_cluster(self, cluster: str) -> None:
        """The loaded code location must know the cluster; a spec added since it loaded is
        picked up by reloading it (its definitions are built from the specs of the moment)."""
        if cluster in self.partition_keys(CLUSTERS_JOB):
            return
        notice(f"code location {CODE_LOCATION} at {self.url} does not know cluster {cluster}: reloading it")
        self.reload()
        if cluster not in self.partition_keys(CLUSTERS_JOB):
            raise PgOpsError(f"cluster {cluster} is not in code location {CODE_LOCATION} at {self.url}, even after "
                             f"a reload: its spec is not among the deployment's cluster specs (PG_OPS_CLUSTERS)")

    def partition_tags(self, job: str, key: str) -> dict[str, str]:
        """The tags Dagster gives a run of `job` for partition `key` (what the UI's launchpad adds)."""
        found = self.query(PARTITION_TAGS_QUERY, {
            "selector": {"repositoryLocationName": CODE_LOCATION, "repositoryName": REPOSITORY},
            "set": f"{job}_partition_set", "key": key})["partitionSetOrError"]
        tags = ((found.get("partition") or {}).get("tagsOrError")) or {}
        if "results" not in tags:
            raise PgOpsError(f"job {job} at {self.url} has no partition {key}: "
                             f"{one_line(found.get('message') or tags.get('message'))}")
        return {t["key"]: t["value"] for t in tags["results"]}

    # -- runs ----------------------------------------------------------------------------------
    def launch(self, launch: JobLaunch) -> tuple[str, dict[str, str]]:
        """Submit the run; returns its id and tags."""
        from dagster_graphql import DagsterGraphQLClientError

        self.require_cluster(launch.cluster)
        tags = launch_tags(launch)
        if launch.partition_key is not None:
            tags = {**self.partition_tags(launch.job, launch.partition_key), **tags}
        try:
            run_id = self.client.submit_job_execution(
                launch.job, repository_location_name=CODE_LOCATION, repository_name=REPOSITORY,
                run_config=launch.config_dict(), tags=tags,
                asset_selection=[list(p) for p in launch.asset_selection] if launch.asset_selection else None)
            return run_id, tags
        except DagsterGraphQLClientError as exc:
            kind, body = (exc.args + ("", ""))[:2]
            detail = body[0].get("message") if isinstance(body, list) and body and isinstance(body[0], dict) else body
            raise PgOpsError(f"the Dagster deployment at {self.url} refused the {launch.job} run: "
                             f"{kind}: {one_line(str(detail))}") from exc

    def events(self, run_id: str, cursor: str | None = None) -> tuple[list[dict], str | None]:
        """Events of a run after `cursor` (all of them when None), and the new cursor."""
        events: list[dict] = []
        while True:
            found = self.query(EVENTS_QUERY, {"runId": run_id, "cursor": cursor})["runOrError"]
            if "eventConnection" not in found:
                raise PgOpsError(f"run {run_id} at {self.url}: {one_line(found.get('message'))}")
            page = found["eventConnection"]
            events += page["events"]
            cursor = page["cursor"]
            if not page["hasMore"]:
                return events, cursor

    def follow(self, run_id: str, queue_tag: tuple[str, str] | None, verbose: bool) -> RunOutcome:
        """Wait for the run's end (saying why when it waits in the queue); with `verbose`, echo
        its log to stderr as it goes."""
        started, explained, cursor = time.monotonic(), False, None
        try:
            while True:
                status = self.client.get_run_status(run_id).value
                if verbose:
                    new, cursor = self.events(run_id, cursor)
                    for ev in new:
                        if ev.get("message"):
                            print(f"  {ev.get('level', 'INFO').lower()} {ev['message']}", file=sys.stderr)
                if status in TERMINAL:
                    break
                if status == "QUEUED" and not explained and time.monotonic() - started > QUEUE_NOTICE_SECONDS:
                    self._explain_queue(run_id, queue_tag)
                    explained = True
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            notice(f"run {run_id[:8]} goes on in the deployment ({self.url}/runs/{run_id}); "
                   f"pg-ops only stopped following it")
            raise
        events, _ = self.events(run_id)
        return outcome_of_events(run_id, status, self.url, events)

    def _explain_queue(self, run_id: str, queue_tag: tuple[str, str] | None) -> None:
        if queue_tag is not None:
            key, value = queue_tag
            found = self.query(RUNNING_QUERY, {"filter": {"tags": [{"key": key, "value": value}],
                                                         "statuses": ["STARTING", "STARTED", "CANCELING"]}})
            holders = (found.get("runsOrError") or {}).get("results") or []
            if holders:
                notice(f"run {run_id[:8]} waits in the run queue behind {holders[0]['jobName']} run "
                       f"{holders[0]['runId'][:8]} ({key}={value}: one at a time)")
                return
        notice(f"run {run_id[:8]} waits in the deployment's run queue")


# -- choosing where ------------------------------------------------------------------------------
def local_url(dagster_home: Path) -> str:
    marker = dagster_home / LOCAL_URL_FILE
    try:
        return marker.read_text().strip() or LOCAL_URL
    except OSError:
        return LOCAL_URL


def named_or_local(options: Options) -> tuple[Deployment, bool, str | None]:
    """The deployment `options` name (--dagster-url / PG_OPS_DAGSTER_URL), else the local one of
    `make run` (which must serve this DAGSTER_HOME); whether it was named; why it cannot take
    runs (None: it can)."""
    from pg_ops import settings

    url = options.dagster_url or os.environ.get(URL_ENV)
    if url:
        deployment = Deployment(url)
        return deployment, True, deployment.unusable_because()
    dagster_home = settings.ensure_dagster_home().resolve()
    deployment = Deployment(local_url(dagster_home))
    return deployment, False, deployment.unusable_because(dagster_home)


def choose_deployment(options: Options, job: str, platform: str, cluster: str) -> Deployment | None:
    """The deployment to submit to, or None to run in this process (after saying so)."""
    bypassed = ("the run queue, the per-cluster topology limit and the run-failure alert do not apply "
                "(the desired-state lock still does)")
    if options.in_process:
        notice(f"running {job} in this process (--in-process): {bypassed}")
        return None
    deployment, named, why = named_or_local(options)
    if named and why:
        raise PgOpsError(f"{why}; nothing was run (--in-process runs it here, bypassing the deployment)")
    if why is None:
        return deployment
    if platform == "kubernetes":
        raise PgOpsError(f"cluster {cluster} runs on Kubernetes and its runs belong to its Dagster deployment, "
                         f"but none was named ({why}): pass --dagster-url URL or set {URL_ENV} "
                         f"(or --in-process to run it here, bypassing the queue, the limits and the alerts)")
    notice(f"{why}: running {job} in this process; {bypassed}")
    return None


def run(launch: JobLaunch, options: Options, platform: str) -> RunOutcome:
    from pg_ops.defs.partitions import TOPOLOGY_TAG

    deployment = choose_deployment(options, launch.job, platform, launch.cluster)
    if deployment is None:
        return run_in_process(launch, options.verbose)
    run_id, tags = deployment.launch(launch)
    queue_tag = (TOPOLOGY_TAG, tags[TOPOLOGY_TAG]) if TOPOLOGY_TAG in tags else None
    return deployment.follow(run_id, queue_tag, options.verbose)


# -- runs that failed lately (what `pg-ops status` shows beside the health conditions) -----------
FAILURES_SHOWN_S = 3600.0  # operations/alerts.py EVENT_SECONDS: how long a run-failure alert fires


def _names_cluster(tags: dict[str, str], cluster: str) -> bool:
    """A run concerns the cluster when a tag names it, or when no tag names any cluster (a job
    over every cluster, such as the hourly archive checks)."""
    from pg_ops.defs.partitions import CLUSTER_TAG, TOPOLOGY_TAG

    named = [tags.get(CLUSTER_TAG), tags.get(TOPOLOGY_TAG)]
    return cluster in named or not any(named)


def recent_failures(cluster: str, options: Options, within: float = FAILURES_SHOWN_S) -> list[dict]:
    """Runs for the cluster that failed in the last `within` seconds, newest first, from the
    deployment the commands would submit to (else the local instance): the run-failure alerts
    still firing. [] with a notice when neither can be read."""
    from pg_ops.defs.partitions import TOPOLOGY_TAG

    since = time.time() - within
    rows: list[tuple[str, str, float, dict[str, str]]] = []
    try:
        deployment, named, why = (None, False, "in process") if options.in_process else named_or_local(options)
        if deployment is not None and why is None:
            found = deployment.query(FAILED_QUERY, {"filter": {"statuses": ["FAILURE"], "updatedAfter": since}})
            for r in (found.get("runsOrError") or {}).get("results") or []:
                rows.append((r["runId"], r["jobName"], r["updateTime"], {t["key"]: t["value"] for t in r["tags"]}))
        elif named:
            raise PgOpsError(why or "the named deployment cannot be read")
        else:
            import dagster as dg

            from pg_ops import settings

            settings.ensure_dagster_home()
            with dg.DagsterInstance.get() as instance:
                for rec in instance.get_run_records(dg.RunsFilter(
                        statuses=[dg.DagsterRunStatus.FAILURE], updated_after=datetime.fromtimestamp(since, UTC)),
                        limit=50):
                    rows.append((rec.dagster_run.run_id, rec.dagster_run.job_name, rec.update_timestamp.timestamp(),
                                 dict(rec.dagster_run.tags)))
    except PgOpsError as exc:
        notice(f"failed runs not shown: {exc}")
        return []
    return [{"run_id": run_id, "job": job, "failed_at": at, "topology": TOPOLOGY_TAG in tags}
            for run_id, job, at, tags in sorted(rows, key=lambda r: -r[2]) if _names_cluster(tags, cluster)]
