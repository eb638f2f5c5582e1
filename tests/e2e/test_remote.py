"""Remotes, proven by round trips from the finished tiny pipeline: a local folder, S3 (dvc-s3
against moto's S3 server on 127.0.0.1), the run-cache, and experiments through a bare git repo.

Every remote is added with `--local` (.dvc/config.local, never committed), as a colleague
would add their own; the clones get theirs the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smolforge.dev.sandbox import clone, ran, sh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHAT_GGUF = "models/chat/gguf/model-q8_0.gguf"
QUESTION = "What is a bridge?"
UP_TO_DATE = "Data and pipelines are up to date."


def add_remote(repo: Path, name: str, url: str, default: bool = False, **options: str) -> None:
    """`dvc remote add --local` (replacing one of the same name) plus its options."""
    sh(repo, "dvc", "remote", "add", "--local", "--force", *(["-d"] if default else []), name, url)
    for key, value in options.items():
        sh(repo, "dvc", "remote", "modify", "--local", name, key, value)


def answer(repo: Path) -> str:
    """The chat command's greedy answer from the chat model's q8_0 GGUF."""
    out = sh(
        repo,
        "smolforge-chat",
        "--model",
        CHAT_GGUF,
        "--once",
        QUESTION,
        "--max-new-tokens",
        "12",
        "--threads",
        "1",
    )
    return out


def digest(path: Path) -> str:
    """sha256 of a file, or of every file under a folder with its relative path."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


TRAINED = ("models/nets/hf", "models/chat/hf", CHAT_GGUF)


def round_trip(origin: Path, dst: Path, url: str, env: dict[str, str] | None = None, **options: str) -> Path:
    """Push the finished pipeline to `url`, clone it to `dst`, `dvc pull` there; then the
    clone is up to date, `dvc repro` runs nothing, and the chat command answers from the
    pulled GGUF as it does in the origin."""
    add_remote(origin, "store", url, **options)
    pushed = sh(origin, "dvc", "push", "-r", "store", extra_env=env)
    assert "pushed" in pushed, pushed

    c = clone(origin, dst)
    assert not (c / CHAT_GGUF).exists()  # a clone has the code and dvc.lock, not the data
    add_remote(c, "store", url, default=True, **options)
    sh(c, "dvc", "pull", extra_env=env)
    for rel in TRAINED:
        assert digest(c / rel) == digest(origin / rel), f"{rel} differs after the pull"
    status = sh(c, "dvc", "status")
    assert UP_TO_DATE in status, status
    again = sh(c, "dvc", "repro")
    assert ran(again) == set(), again
    reply = answer(c)
    assert reply.strip(), "the chat command printed no answer"
    assert reply == answer(origin)
    return c


def test_local_folder_remote_round_trip(finished, tmp_path):
    round_trip(finished, tmp_path / "clone", str(tmp_path / "store"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(tmp_path):
    """moto's standalone S3 server on 127.0.0.1 with an empty bucket: (endpoint, env, client)."""
    with moto_s3(tmp_path) as server:
        yield server


@contextlib.contextmanager
def moto_s3(tmp_path: Path):
    """Start moto's S3 server on a free loopback port, make bucket `smolforge`, stop it after."""
    port = free_port()
    log = (tmp_path / "moto.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    # credentials are moto's placeholders; no shared AWS config or instance metadata is read
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1}),
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                client.create_bucket(Bucket="smolforge")
                break
            except Exception as e:  # not listening yet
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto's S3 server did not start: {e}\n{(tmp_path / 'moto.log').read_text()}"
                    ) from e
                time.sleep(0.5)
        yield endpoint, env, client
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_s3_remote_round_trip(finished, tmp_path, s3):
    endpoint, env, client = s3
    round_trip(finished, tmp_path / "clone", "s3://smolforge/store", env, endpointurl=endpoint)
    stored = client.list_objects_v2(Bucket="smolforge", Prefix="store/")
    assert stored["KeyCount"] > 0  # the objects really went through the S3 server


def test_repro_pull_gets_the_trained_models_without_training(finished, tmp_path):
    store = str(tmp_path / "store")
    add_remote(finished, "runs", store)
    sh(finished, "dvc", "push", "--run-cache", "-r", "runs")

    c = clone(finished, tmp_path / "clone")
    add_remote(c, "runs", store, default=True)
    assert not (c / ".dvc/cache").exists()  # a fresh clone: no data, no run records
    # the clone's dvc.lock records these runs, so --pull downloads each unchanged stage's
    # recorded inputs and outputs instead of running it; the run records play no part here
    # (the same restore works from a remote pushed without --run-cache)
    out = sh(c, "dvc", "repro", "--pull", "train@nets", "train@chat")
    assert ran(out) == set(), f"stages ran instead of being restored:\n{out}"
    for stage in ("train@nets", "train@chat"):
        assert f"Pulling data for stage: '{stage}'" in out, out
    for rel in ("models/nets/hf", "models/chat/hf"):
        assert digest(c / rel) == digest(finished / rel), f"{rel} differs from the trained one"


def objects_missing(origin: Path, store: Path) -> list[str]:
    """The outputs, by path, of the origin's run records whose objects (or, for a folder,
    any of its files' objects) the folder remote `store` lacks."""
    import yaml

    def obj(md5: str, root: Path) -> Path:
        return root / "files" / "md5" / md5[:2] / md5[2:]

    cache, missing = origin / ".dvc" / "cache", set()
    for record in (cache / "runs").glob("*/*/*"):
        for out in yaml.safe_load(record.read_text()).get("outs", []):
            md5 = out["md5"]
            wanted = [md5]
            if md5.endswith(".dir") and obj(md5, cache).is_file():
                wanted += [e["md5"] for e in json.loads(obj(md5, cache).read_text())]
            if not all(obj(m, store).is_file() for m in wanted):
                missing.add(out["path"])
    return sorted(missing)


# DVC up to 3.27.0 pushed, with --run-cache, the objects its run records name too (its push
# passed the records to `used_objs`; the run-cache commits even `cache: false` outputs to the
# local cache, so a record names theirs). Since 3.27.1
# (iterative/dvc commit 3fee81f, "push: use index push") it pushes the records alone, and
# plain `dvc push` sends only outputs with a cache. Every stage here declares its metrics
# (and plots) `cache: false`, so on another machine no record can be restored: `dvc repro
# --pull` warns "Some of the cache files do not exist neither locally nor on remote" and
# runs the stage (the symptom of iterative/dvc#5749, whose answer was `push --run-cache`).
# Measured with DVC 3.67.1: with those objects copied into the remote by hand, the same
# clone restores generate, format, pretokenize and train from the run-cache and trains
# nothing, so they are the whole difference. docs/remotes.md has the details.
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,  # the stage ran; an error anywhere else is a real failure
    reason="DVC 3.67.1: `dvc push --run-cache` sends the run records but not the objects of their "
    "`cache: false` outputs (every stage's metrics and plots) since DVC 3.27.1, so no run record "
    "can be restored on another machine and the stage runs again "
    "(https://github.com/iterative/dvc/issues/5749, https://github.com/iterative/dvc/commit/3fee81f; "
    "docs/remotes.md)",
)
def test_run_cache_alone_restores_training_without_dvc_lock(finished, tmp_path):
    store = tmp_path / "store"
    add_remote(finished, "runs", str(store))
    sh(finished, "dvc", "push", "--run-cache", "-r", "runs")

    c = clone(finished, tmp_path / "clone")
    add_remote(c, "runs", str(store), default=True)
    # a checkout whose dvc.lock does not record this run (another branch, a lost lock):
    # only the run-cache can tell DVC that these commands already ran on these inputs
    (c / "dvc.lock").unlink()
    out = sh(c, "dvc", "repro", "--pull", "train@nets")  # the nets model only: a failure is cheap
    assert ran(out) == set(), (
        f"stages ran instead of being restored from the run-cache; the remote lacks the objects of "
        f"{objects_missing(finished, store)}:\n{out}"
    )
    assert digest(c / "models/nets/hf") == digest(finished / "models/nets/hf")


def exp_show(repo: Path) -> list[dict]:
    """`dvc exp show --json`, parsed (any notes on stderr after it are left out)."""
    out = sh(repo, "dvc", "exp", "show", "--json")
    return json.JSONDecoder().raw_decode(out, out.index("["))[0]


def find_exp(rows: list[dict], name: str) -> dict | None:
    """The `dvc exp show --json` record of experiment `name`, searched at any depth."""
    for row in rows:
        if row.get("name") == name and row.get("data"):
            return row
        for exp in row.get("experiments") or []:
            if hit := find_exp(exp.get("revs") or [], name):
                return hit
    return None


def test_exp_push_pull_through_a_bare_repo_and_a_remote(finished, tmp_path):
    store = str(tmp_path / "store")
    hub = tmp_path / "hub.git"
    sh(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(hub))

    # one side: a clone with the data, an experiment, pushed (git refs + DVC data)
    mine = clone(finished, tmp_path / "mine")
    add_remote(finished, "store", store)
    sh(finished, "dvc", "push", "-r", "store")
    add_remote(mine, "store", store, default=True)
    sh(mine, "dvc", "pull")
    sh(mine, "git", "remote", "add", "hub", str(hub))
    sh(mine, "git", "push", "-q", "hub", "main")
    sh(mine, "dvc", "exp", "run", "-n", "lr2e-3", "-S", "train.nets.lr=2e-3")
    sh(mine, "dvc", "exp", "push", "hub", "lr2e-3")

    # the other side: a clone of the bare repo pulls the experiment and sees its metrics
    theirs = clone(hub, tmp_path / "theirs")
    add_remote(theirs, "store", store, default=True)
    assert find_exp(exp_show(theirs), "lr2e-3") is None
    sh(theirs, "dvc", "exp", "pull", "origin", "lr2e-3")
    shown = exp_show(theirs)
    exp = find_exp(shown, "lr2e-3")
    assert exp is not None, f"dvc exp show lists no lr2e-3: {json.dumps(shown)[:2000]}"
    params = exp["data"]["params"]["params.yaml"]["data"]
    assert params["train"]["nets"]["lr"] == 2e-3
    metrics = {path: m["data"] for path, m in exp["data"]["metrics"].items()}
    assert any(path.startswith("metrics/evaluate/") for path in metrics), sorted(metrics)
    assert all(metrics.values()), f"metrics files without figures: {metrics}"

    # and its trained model came along: applying it checks the experiment's model out
    sh(theirs, "dvc", "exp", "apply", "lr2e-3")
    assert digest(theirs / "models/nets/hf") == digest(mine / "models/nets/hf")
