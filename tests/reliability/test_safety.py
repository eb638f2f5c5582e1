"""Safety: nothing unpickles an untrusted file (weights_only=True, safetensors only for train's
outputs); a hostile site's URLs cannot make the scraper write outside its outputs, nor a local
site leak files outside its folder; robots.txt is obeyed however a disallowed URL is spelled."""

from __future__ import annotations

import ast
import json
import os
import pickle
import posixpath
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from smolforge.core.cli import StageError, run
from stages import scrape
from tests.conftest import ROOT, listing
from tests.httpfixtures import html, page, redirect, serve

CODE = sorted([*ROOT.glob("smolforge/**/*.py"), *ROOT.glob("stages/*.py")])


def calls(name: str):
    """(file, call node) for every call of `*.name(...)` or `name(...)` in the project's code."""
    for path in CODE:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if called == name:
                    yield path.relative_to(ROOT).as_posix(), node


def keyword(node: ast.Call, name: str):
    kw = {k.arg: k.value for k in node.keywords}
    return kw[name].value if isinstance(kw.get(name), ast.Constant) else kw.get(name, "absent")


def test_no_code_can_unpickle_a_file():
    assert len(CODE) > 40 and ROOT / "smolforge/core/checkpoint.py" in CODE  # the scan sees the library
    for path in CODE:
        tree = ast.parse(path.read_text())
        imported = {
            a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        }
        imported |= {
            n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
        }
        assert not imported & {"pickle", "cPickle", "dill", "joblib", "marshal", "shelve"}, path
    loads = list(calls("load"))
    for where, node in loads:
        if ast.unparse(node.func) == "torch.load":
            assert keyword(node, "weights_only") is True, where
        if ast.unparse(node.func) in ("np.load", "numpy.load"):
            assert keyword(node, "allow_pickle") in ("absent", False), where
    assert any(ast.unparse(n.func) == "torch.load" for _, n in loads)  # the scan does see them
    for where, node in calls("from_pretrained"):
        assert keyword(node, "trust_remote_code") in ("absent", False), where
        if ast.unparse(node.func) == "AutoModelForCausalLM.from_pretrained":
            # one place loads train's outputs (safetensors only), one a user-named base
            assert where in ("smolforge/core/hf.py", "smolforge/core/pretrained.py"), where


class Payload:
    """Runs a command when unpickled: what a hostile pytorch_model.bin would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_model_file_is_never_loaded(tiny_run, tmp_path, caplog):
    hf, marker = tmp_path / "hf", tmp_path / "PWNED"
    shutil.copytree(tiny_run["hf"], hf)
    (hf / "model.safetensors").unlink()
    (hf / "pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    from smolforge.chat import talk
    from stages import convert, evaluate

    common = ["--params", str(tiny_run["params"]), "--model", "nets", "--hf", str(hf)]
    out = ["--out", str(tmp_path / "out")]
    assert (
        run(evaluate.main, [*common, "--in", str(tiny_run["generate"]), "--live", str(tmp_path / "m"), *out])
        == 2
    )
    assert (
        run(
            convert.main,
            [*common, "--tokens", str(tiny_run["tokens"]), "--metrics", str(tmp_path / "m.json"), *out],
        )
        == 2
    )
    with pytest.raises(StageError, match="model.safetensors: file not found"):
        talk.load(hf)
    assert caplog.text.count(f"{hf}/model.safetensors: file not found (written by stage train") == 2
    assert not marker.exists() and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the scraper's writes


def essay(title: str, words: str = "") -> str:
    body = " ".join(f"{title.strip('./')}{i}" for i in range(60))
    return html(f"<p>{body} {words}</p>", title)


ESCAPES = [
    "../../../../../../etc/passwd",
    "/..%2f..%2f..%2fetc%2fpasswd",
    "/%2e%2e/%2e%2e/secret.txt",
    "/a/../../../b.html",
    "/page?name=../../../out&file=/etc/passwd",
    "/nul%00byte.html",
    "/" + "x" * 300,
    "file:///etc/passwd",
    "//evil.invalid/x",
    "javascript:alert(1)",
    "data:text/html,<p>hi</p>",
    "/to-parent",
    "/to-file",
]


def sandbox_files(work: Path) -> list[str]:
    return [p for p in listing(work) if (work / p).is_file()]


def test_hostile_urls_cannot_make_the_scraper_write_outside_its_outputs(tiny_params, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.move(tiny_params, work / "params.yaml")
    monkeypatch.chdir(work)
    routes = {
        "/": page(html("".join(f'<a href="{u}">x</a> ' for u in ESCAPES), "Index")),
        "/page?name=../../../out&file=/etc/passwd": page(essay("../../../../escape")),
        "/to-parent": redirect("../../../../../tmp/escape"),
        "/to-file": redirect("file:///etc/passwd"),
    }
    with serve(routes) as srv:
        data = yaml.safe_load((work / "params.yaml").read_text())
        data["scrape"].update(source=srv.url("/"), min_words=20)
        (work / "params.yaml").write_text(yaml.safe_dump(data))
        argv = ["--params", "params.yaml", "--out", "data/scrape", "--cache", ".cache/scrape"]
        assert (
            run(scrape.main, [*argv, "--metrics", "metrics/scrape.json", "--timing", "metrics/t.json"]) == 0
        )
    assert os.listdir(tmp_path) == ["work"]  # nothing beside the working directory
    written = sandbox_files(work)
    cached = [f for f in written if f.startswith(".cache/scrape/")]
    assert sorted(set(written) - set(cached)) == [
        "data/scrape/meta.json",
        "data/scrape/pages.jsonl",
        "metrics/scrape.json",
        "metrics/t.json",
        "params.yaml",
    ]
    for f in cached:  # named by a hash of the URL, never by the URL
        stem, ext = Path(f).name.split(".")
        assert len(stem) == 40 and set(stem) <= set("0123456789abcdef") and ext in ("json", "body")
    docs = [json.loads(x) for x in (work / "data/scrape/pages.jsonl").read_text().splitlines()]
    assert [d["title"] for d in docs] == ["../../../../escape"]  # kept as text, used for no path
    # ../ in a URL is only ever a path on the site (asked for over HTTP: a 404 here)
    meta = json.loads((work / "data/scrape/meta.json").read_text())
    assert {x["url"].removeprefix(srv.base) for x in meta["not_written"]} >= {"/etc/passwd", "/b.html"}


def test_a_local_site_serves_nothing_outside_its_folder(tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.html").write_text(essay("Secret", "TOPSECRET"))
    site = tmp_path / "site"
    site.mkdir()
    links = ["../secret.html", "/../secret.html", "%2e%2e/secret.html", "/..%2fsecret.html", "ok.html"]
    (site / "index.html").write_text(html("".join(f'<a href="{u}">x</a> ' for u in links), "Index"))
    (site / "ok.html").write_text(essay("Fine"))
    data = yaml.safe_load(tiny_params.read_text())
    data["scrape"].update(source="site", min_words=20)
    tiny_params.write_text(yaml.safe_dump(data))
    argv = ["--params", str(tiny_params), "--out", "out", "--cache", "cache", "--metrics", "m.json"]
    assert run(scrape.main, [*argv, "--timing", "t.json"]) == 0
    pages = (tmp_path / "out/pages.jsonl").read_text()
    assert "Fine0" in pages and "TOPSECRET" not in pages
    assert not any(
        b"TOPSECRET" in (tmp_path / "cache" / f).read_bytes() for f in os.listdir(tmp_path / "cache")
    )


# ---------------------------------------------------------------- robots.txt


def test_robots_txt_is_obeyed_however_a_disallowed_url_is_spelled(tiny_params, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spellings = ["/private", "/private/page", "/%70rivate", "/./private", "/public/../private",
                 "/private?x=1", "/redirect", "/agent-only", "/public"]  # fmt: skip
    robots = "User-agent: *\nDisallow: /private\n\nUser-agent: smolforge-test\nDisallow: /private\nDisallow: /agent-only\n"
    routes = {
        "/robots.txt": page(robots, ctype="text/plain"),
        "/": page(html("".join(f'<a href="{u}">x</a> ' for u in spellings), "Index")),
        "/public": page(essay("Public")),
        "/redirect": redirect("/private/moved"),
    }
    with serve(routes) as srv:
        data = yaml.safe_load(tiny_params.read_text())
        data["scrape"].update(source=srv.url("/"), min_words=20)
        tiny_params.write_text(yaml.safe_dump(data))
        argv = ["--params", str(tiny_params), "--out", "out", "--cache", "cache", "--metrics", "m.json"]
        assert run(scrape.main, [*argv, "--timing", "t.json"]) == 0
    fetched = [posixpath.normpath(unquote(urlsplit(r.path).path)) for r in srv.log]
    assert not [p for p in fetched if p.startswith(("/private", "/agent-only"))], fetched
    assert "/public" in fetched and "/redirect" in fetched  # the redirect's target is refused, not fetched
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["skipped"]["robots"] >= 6 and metrics["documents"] == 1
