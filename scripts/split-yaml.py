"""Writes each YAML document of the given files as its own JSON file in OUT_DIR, so that
single-document validators (check-jsonschema) can check multi-document definition files."""
import json
import pathlib
import sys

from ruamel.yaml import YAML


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    yaml = YAML(typ="safe")
    count = 0
    for name in sys.argv[2:]:
        path = pathlib.Path(name)
        for i, doc in enumerate(yaml.load_all(path.read_text(encoding="utf-8"))):
            if doc is None:
                continue
            target = out / f"{str(path).replace('/', '__')}.{i}.json"
            target.write_text(json.dumps(doc, default=str), encoding="utf-8")
            count += 1
    print(f"split {count} documents from {len(sys.argv) - 2} files")


if __name__ == "__main__":
    main()
