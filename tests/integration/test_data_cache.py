"""The token cache across processes: processes started together on an edited corpus build one new cache."""

import json
import os
import subprocess
import sys

import glubench.data.cache as gd

_PREPARE = """
import hashlib, json, logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from glubench.data.cache import prepare_splits
folder, splits = prepare_splits(json.loads(sys.argv[1]))
tokens = bytes(splits.train.astype("uint8")) + bytes(splits.val.astype("uint8"))
print(json.dumps({"folder": str(folder), "sha": hashlib.sha256(tokens).hexdigest(), "n": len(tokens),
                  "old": tokens.count(b"old"), "new": tokens.count(b"new")}))
"""


def test_processes_started_together_on_a_file_edited_in_place_share_one_new_cache(tmp_path):
    """A corpus file edited in place (same size, mtime restored): 4 processes started at the same instant, with
    no parent preparing first, all memory-map the same new cache, built once, holding the new text."""
    path = tmp_path / "corpus.txt"
    old = "".join(f"Paragraph {i} says something old.\n\n" for i in range(400))
    path.write_text(old)
    data = {"name": "text", "files": str(path), "val_percent": 10.0, "tokenizer": "bytes", "vocab_size": 256,
            "cache_dir": str(tmp_path / "cache")}
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(gd.__file__)))}  # this copy

    def start():
        return subprocess.Popen([sys.executable, "-c", _PREPARE, json.dumps(data)], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    first = start()
    before = json.loads(first.communicate(timeout=300)[0].strip().splitlines()[-1])
    stat = path.stat()
    new = old.replace("old", "new")
    assert len(new) == len(old)
    path.write_text(new)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the size/mtime shortcut would call this unchanged
    procs = [start() for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e[-2000:] for _, e in outs]
    seen = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert len({s["folder"] for s in seen}) == 1 and seen[0]["folder"] != before["folder"]
    assert len({s["sha"] for s in seen}) == 1
    # bytes tokenizer: the cache holds exactly the new text's bytes (train and validation paragraphs)
    assert (before["n"], before["old"], before["new"]) == (len(old), 400, 0)
    assert (seen[0]["n"], seen[0]["old"], seen[0]["new"]) == (len(new), 0, 400)
    tokenized = sum(err.count("(tokenizer=bytes, vocab 256) into") for _, err in outs)  # the miss line
    assert tokenized == 1  # one process built it; the others waited on the lock and found it
