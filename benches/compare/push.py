#!/usr/bin/env python3
"""Push the benchmark content into a distribution registry (python3 stdlib only).

    push.py UPSTREAM_URL OUT_DIR BIG_LAYER_BYTES BIG_LAYER_COUNT SMALL_COUNT

- bench/big:1   one OCI image: a config and BIG_LAYER_COUNT layers of random bytes (raw, not
                tar+gzip: `ctr content fetch` does not unpack, and gzip'ing random data is slow)
- bench/small:N N = 1..SMALL_COUNT, each with its own config and one 1 KiB random layer

Blobs go up as monolithic uploads (POST /v2/<name>/blobs/uploads/, then PUT ?digest=).
Writes to OUT_DIR:
  content.sh           shell assignments: BIG_MANIFEST BIG_CONFIG BIG_LAYERS SMALL_COUNT
  big.manifest.json    the bytes pushed as bench/big:1
  small-tags.txt       request paths /v2/bench/small/manifests/<tag>, one a line
  small-digests.txt    request paths /v2/bench/small/manifests/<digest>, same order
  small-expected.txt   "<tag> <digest>" per small image (what each must resolve to)
  small-blobs.txt      "<tag> <layer digest> <config digest>" per small image (benches/load.sh)
"""
import hashlib
import http.client
import json
import os
import sys
import urllib.parse

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


class Registry:
    def __init__(self, url):
        u = urllib.parse.urlsplit(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=300)

    def request(self, method, path, body=None, headers=None, want=(200, 201, 202)):
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status not in want:
            sys.exit(f"push.py: {method} {path} -> {resp.status}: {data[:300]!r}")
        return resp

    def push_blob(self, repo, data):
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        if self.request("HEAD", f"/v2/{repo}/blobs/{digest}", want=(200, 404)).status == 200:
            return digest
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", want=(202,))
        loc = urllib.parse.urlsplit(resp.getheader("Location"))
        query = (loc.query + "&" if loc.query else "") + "digest=" + urllib.parse.quote(digest)
        self.request("PUT", f"{loc.path}?{query}", body=data,
                     headers={"Content-Type": "application/octet-stream",
                              "Content-Length": str(len(data))}, want=(201,))
        return digest

    def push_manifest(self, repo, tag, config, config_digest, layers):
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": n} for d, n in layers],
        }
        body = json.dumps(manifest, indent=2).encode()
        self.request("PUT", f"/v2/{repo}/manifests/{tag}", body=body,
                     headers={"Content-Type": OCI_MANIFEST}, want=(201,))
        return body, "sha256:" + hashlib.sha256(body).hexdigest()


def config_for(name, layer_digests):
    return json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Labels": {"berth.bench": name}},
        "rootfs": {"type": "layers", "diff_ids": layer_digests},
    }).encode()


def main():
    url, out, big_bytes, big_count, small_count = sys.argv[1:6]
    big_bytes, big_count, small_count = int(big_bytes), int(big_count), int(small_count)
    reg = Registry(url)

    layers = []
    for _ in range(big_count):
        data = os.urandom(big_bytes)
        layers.append((reg.push_blob("bench/big", data), len(data)))
        del data
    config = config_for("big", [d for d, _ in layers])
    config_digest = reg.push_blob("bench/big", config)
    body, big_digest = reg.push_manifest("bench/big", "1", config, config_digest, layers)
    with open(os.path.join(out, "big.manifest.json"), "wb") as f:
        f.write(body)

    shared = reg.push_blob("bench/small", os.urandom(1024))
    tags, digests, expected, blobs = [], [], [], []
    for n in range(1, small_count + 1):
        layer = os.urandom(1024)
        ld = reg.push_blob("bench/small", layer)
        cfg = config_for(f"small-{n}", [shared, ld])
        cd = reg.push_blob("bench/small", cfg)
        _, md = reg.push_manifest("bench/small", str(n), cfg, cd,
                                  [(shared, 1024), (ld, len(layer))])
        tags.append(f"/v2/bench/small/manifests/{n}")
        digests.append(f"/v2/bench/small/manifests/{md}")
        expected.append(f"{n} {md}")
        blobs.append(f"{n} {ld} {cd}")

    for name, lines in (("small-tags.txt", tags), ("small-digests.txt", digests),
                        ("small-expected.txt", expected), ("small-blobs.txt", blobs)):
        with open(os.path.join(out, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "content.sh"), "w") as f:
        f.write(f"BIG_MANIFEST={big_digest}\n")
        f.write(f"BIG_CONFIG={config_digest}\n")
        f.write(f"BIG_LAYERS=({' '.join(d for d, _ in layers)})\n")
        f.write(f"BIG_LAYER_BYTES={big_bytes}\n")
        f.write(f"SMALL_COUNT={small_count}\n")


if __name__ == "__main__":
    main()
