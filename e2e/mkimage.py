#!/usr/bin/env python3
"""Write an OCI image layout with random-content layers (stdlib only).

Usage:
  mkimage.py single DIR TAG SIZE [SIZE ...]
      one linux/amd64 image manifest; one gzip'd tar layer per SIZE
  mkimage.py multi DIR TAG SIZE [SIZE ...]
      an OCI index over linux/amd64 and linux/arm64 manifests, each platform
      with its own (distinct) layers of the given sizes

SIZE is the size of the random file inside each layer: bytes, or with a
K/M suffix (KiB/MiB). Random content does not compress, so the gzip'd layer
is slightly larger than SIZE.

Prints the top-level manifest/index digest of the layout (note: skopeo may
recompress layers on push, so read digests back from the registry).
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile
import time

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def parse_size(s):
    s = s.strip()
    mult = 1
    if s[-1] in "kK":
        mult, s = 1024, s[:-1]
    elif s[-1] in "mM":
        mult, s = 1024 * 1024, s[:-1]
    return int(s) * mult


def put_blob(root, data):
    d = hashlib.sha256(data).hexdigest()
    p = os.path.join(root, "blobs", "sha256", d)
    if not os.path.exists(p):
        with open(p, "wb") as f:
            f.write(data)
    return "sha256:" + d


def make_layer(size, name):
    """A tar with one file of `size` random bytes, gzip'd.
    Returns (gzip bytes, diff_id of the uncompressed tar)."""
    payload = os.urandom(size)
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo(name)
        ti.size = size
        ti.mode = 0o644
        ti.mtime = int(time.time())
        tf.addfile(ti, io.BytesIO(payload))
    raw = tbuf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(raw).hexdigest()
    gz = gzip.compress(raw, compresslevel=1, mtime=0)
    return gz, diff_id


def make_manifest(root, sizes, arch, tag_hint):
    layers = []
    diff_ids = []
    for i, sz in enumerate(sizes):
        gz, diff_id = make_layer(sz, "data/%s-%s-layer%d.bin" % (tag_hint, arch, i))
        dg = put_blob(root, gz)
        layers.append({"mediaType": MT_LAYER, "digest": dg, "size": len(gz)})
        diff_ids.append(diff_id)
    config = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/true"], "Labels": {"e2e.nonce": os.urandom(8).hex()}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "berth e2e mkimage.py"} for _ in sizes],
    }
    cbytes = json.dumps(config, separators=(",", ":")).encode()
    cdg = put_blob(root, cbytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": cdg, "size": len(cbytes)},
        "layers": layers,
    }
    mbytes = json.dumps(manifest, separators=(",", ":")).encode()
    mdg = put_blob(root, mbytes)
    return {"mediaType": MT_MANIFEST, "digest": mdg, "size": len(mbytes)}


def main(argv):
    if len(argv) < 5 or argv[1] not in ("single", "multi"):
        sys.stderr.write(__doc__)
        return 2
    kind, root, tag = argv[1], argv[2], argv[3]
    sizes = [parse_size(s) for s in argv[4:]]
    os.makedirs(os.path.join(root, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(root, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    if kind == "single":
        top = make_manifest(root, sizes, "amd64", tag)
    else:
        subs = []
        for arch in ("amd64", "arm64"):
            d = make_manifest(root, sizes, arch, tag)
            d["platform"] = {"architecture": arch, "os": "linux"}
            subs.append(d)
        index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": subs}
        ibytes = json.dumps(index, separators=(",", ":")).encode()
        top = {"mediaType": MT_INDEX, "digest": put_blob(root, ibytes), "size": len(ibytes)}
    top = dict(top)
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    with open(os.path.join(root, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [top]}, f)
    print(top["digest"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
