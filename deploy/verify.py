"""Check a bundle folder against its manifest, and promote a verified staging folder.

Standard library only and no package-relative imports: the workstation sends this file's
source to the device as `python3 -c SOURCE verify ...`, so the check that decides whether a
transferred folder may run is the workstation's own code, not code that just arrived.

    python3 -m deploy verify BUNDLE [--expect SHA256] [--promote FINAL] [--prune PREFIX]
"""

import hashlib
import json
import os
import re
import shutil
import sys
import uuid

MANIFEST = "manifest.json"
SCHEMA = "edgekd.bundle"
VERSION = 1
# Python writes these beside imported modules; they are not part of what was shipped.
_IGNORED_DIRS = ("__pycache__",)


class BundleError(Exception):
    """A bundle folder does not match its manifest (or has none); the message says what."""


def sha256_file(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _safe_rel(rel):
    # Manifest paths stay inside the bundle: relative, no '..', no backslashes.
    parts = rel.split("/")
    return (bool(rel) and not rel.startswith("/") and "\\" not in rel
            and all(p not in ("", ".", "..") for p in parts))


def verify_bundle(folder, expect=None):
    """The manifest of `folder` after checking every listed file's size and sha256 and that
    nothing else is there; `expect` is the manifest's own sha256 when the caller knows it."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise BundleError("%s has no %s: not a bundle, or the transfer did not finish" % (folder, MANIFEST))
    manifest_sha = sha256_file(path)
    if expect is not None and manifest_sha != expect:
        raise BundleError("%s is not the bundle that was sent (manifest sha256 %s, expected %s)"
                          % (folder, manifest_sha[:12], expect[:12]))
    try:
        with open(path, "rb") as f:
            manifest = json.loads(f.read().decode("utf-8"))
    except ValueError as e:
        raise BundleError("%s is not valid JSON (%s)" % (path, e)) from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError("%s is not an %s manifest" % (path, SCHEMA))
    if manifest.get("schema_version") != VERSION:
        raise BundleError("%s is bundle version %r; this code reads version %d: deploy again with "
                          "a matching edgekd" % (path, manifest.get("schema_version"), VERSION))
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError("%s lists no files" % path)
    for rel, entry in sorted(files.items()):
        if not _safe_rel(rel) or not isinstance(entry, dict):
            raise BundleError("%s lists an unsafe or malformed entry %r" % (path, rel))
        target = os.path.join(folder, *rel.split("/"))
        if not os.path.isfile(target):
            raise BundleError("%s is missing (incomplete transfer)" % target)
        if os.path.getsize(target) != entry.get("bytes"):
            raise BundleError("%s has %d bytes, the manifest says %r (incomplete or damaged)"
                              % (target, os.path.getsize(target), entry.get("bytes")))
        if sha256_file(target) != entry.get("sha256"):
            raise BundleError("%s does not match its sha256 (damaged in transfer or modified)" % target)
    extra = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if d not in _IGNORED_DIRS]
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")
            if rel != MANIFEST and rel not in files:
                extra.append(rel)
    if extra:
        raise BundleError("%s holds files the manifest does not list (%s): it was modified or a "
                          "transfer left debris" % (folder, ", ".join(sorted(extra)[:3])))
    manifest["manifest_sha256"] = manifest_sha
    return manifest


def promote(staging, final):
    """Rename a verified `staging` folder to `final` in one step; an existing `final` is swapped
    out first (POSIX cannot rename over a non-empty folder) and restored if the rename fails."""
    if not os.path.isdir(final):
        os.rename(staging, final)
        return
    old = os.path.join(os.path.dirname(final) or ".",
                       ".old-%s-%s" % (os.path.basename(final), uuid.uuid4().hex[:8]))
    os.rename(final, old)
    try:
        os.rename(staging, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def prune(parent, prefix, keep):
    """Remove older bundles and stale staging folders named `prefix<12 hex>` in `parent`, so
    a small device does not fill up with every version of a run; returns what was removed."""
    pattern = re.compile(r"^(\.staging-|\.old-)?%s[0-9a-f]{12}(-[0-9a-f]{8})?$" % re.escape(prefix))
    removed = []
    for name in sorted(os.listdir(parent)):
        path = os.path.join(parent, name)
        if name != keep and pattern.match(name) and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(name)
    return removed


def main(argv):
    args = list(argv)
    if args[:1] == ["verify"]:
        args = args[1:]
    options = {"--expect": None, "--promote": None, "--prune": None}
    positional = []
    while args:
        a = args.pop(0)
        if a in options and args:
            options[a] = args.pop(0)
        else:
            positional.append(a)
    if len(positional) != 1:
        sys.stderr.write("usage: verify BUNDLE [--expect SHA256] [--promote FINAL] [--prune PREFIX]\n")
        return 2
    folder = positional[0]
    try:
        manifest = verify_bundle(folder, options["--expect"])
        where = folder
        removed = []
        if options["--promote"]:
            promote(folder, options["--promote"])
            where = options["--promote"]
            if options["--prune"]:
                removed = prune(os.path.dirname(where) or ".", options["--prune"],
                                os.path.basename(where))
    except BundleError as e:
        sys.stderr.write("error: %s\n" % e)
        return 3
    except OSError as e:
        sys.stderr.write("error: %s: %s\n" % (getattr(e, "filename", None) or folder, e.strerror or e))
        return 4
    sys.stdout.write(json.dumps({"ok": True, "bundle": where, "files": len(manifest["files"]),
                                 "manifest_sha256": manifest["manifest_sha256"],
                                 "pruned": removed}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
