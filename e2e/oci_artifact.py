#!/usr/bin/env python3
"""OCI artifacts with oras-py (PyPI `oras`), plain HTTP:
    oci_artifact.py push HOST/REPO:TAG FILE[:MEDIATYPE] [CONFIG:MEDIATYPE]
        # an artifact of one file (a helm chart: the chart's layer and config media types)
    oci_artifact.py pull HOST/REPO:TAG OUTDIR
        # prints the paths of the files pulled
"""
import sys

import oras.client


def main():
    verb, target, path = sys.argv[1:4]
    client = oras.client.OrasClient(insecure=True)
    if verb == "push":
        config = sys.argv[4] if len(sys.argv) > 4 else None
        client.push(target=target, files=[path], manifest_config=config, disable_path_validation=True)
    elif verb == "pull":
        for f in client.pull(target=target, outdir=path):
            print(f)
    else:
        sys.exit(f"unknown verb {verb}")


if __name__ == "__main__":
    main()
