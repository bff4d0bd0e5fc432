#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Regenerates the option lists of man/kiln-template.5 from
schemas/template.schema.json, so the page and the schema cannot drift.

Usage: man/gen-template-options.py [--check]
Rewrites the text between the '.\\" BEGIN OPTIONS name' and
'.\\" END OPTIONS name' markers of the page; --check only reports (exit 1)
when the page is out of date.
"""
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEMA = os.path.join(ROOT, "schemas", "template.schema.json")
PAGE = os.path.join(ROOT, "man", "kiln-template.5")


def roff(text):
    """Escapes text for a roff line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    if text.startswith((".", "'")):
        text = "\\&" + text
    return text


def type_name(p):
    t = p.get("type")
    fmt = p.get("format")
    if fmt == "duration":
        return "duration"
    if isinstance(t, list):
        return " or ".join("list" if x == "array" else x for x in t)
    if t == "array":
        items = p.get("items", {})
        if items.get("type") == "array":
            return "list of lists of strings"
        if items.get("format") == "path":
            return "list of paths"
        if items.get("type") == "integer":
            return "list of integers"
        return "list of strings"
    if t == "object":
        if "properties" in p:
            return "object"
        extra = p.get("additionalProperties")
        if isinstance(extra, dict) and extra.get("type") == "object":
            return "map of objects"
        return "map of strings"
    if fmt == "path":
        return "path"
    return t or "any"


def shown(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v + '"'
    return json.dumps(v)


def entry(name, p):
    lines = [".TP", ".B " + roff(name)]
    facts = [type_name(p)]
    if "default" in p:
        facts.append("default " + shown(p["default"]))
    if "enum" in p:
        facts.append("one of " + ", ".join(p["enum"]))
    items = p.get("items", {})
    if isinstance(items, dict) and "enum" in items:
        facts.append("each one of " + ", ".join(items["enum"]))
    if p.get("x-kiln"):
        facts.append("kiln only")
    if p.get("x-kiln-since"):
        facts.append("from " + p["x-kiln-since"] + ", not in Packer 1.6.6")
    lines.append("(" + roff("; ".join(facts)) + ")")
    lines.append(roff(p.get("description", "")))
    if "properties" in p:
        for sub, sp in p["properties"].items():
            lines.append(".br")
            lines.append(roff(name + "." + sub + " (" + type_name(sp) + "): " + sp.get("description", "")))
    return lines


def options(props, skip=()):
    out = []
    for name in props:
        if name not in skip:
            out += entry(name, props[name])
    return out


def sections(schema):
    d = schema["definitions"]
    qemu, null = d["builder.qemu"]["properties"], d["builder.null"]["properties"]
    builder_common = ["type", "name"]
    communicator = [k for k in null if k not in builder_common]
    prov_common = [k for k in d["provisioner.breakpoint"]["properties"] if k not in ("disable", "note")]
    pp_common = [k for k in d["post-processor.artifice"]["properties"] if k != "files"]
    out = {}
    out["builder-common"] = options({k: qemu[k] for k in builder_common})
    out["communicator"] = options({k: null[k] for k in communicator})
    out["qemu"] = options(qemu, skip=builder_common + communicator)
    out["provisioner-common"] = options({k: d["provisioner.shell"]["properties"][k] for k in prov_common})
    for t in ("shell", "file", "shell-local", "breakpoint", "ansible"):
        out["provisioner." + t] = options(d["provisioner." + t]["properties"], skip=prov_common)
    out["post-processor-common"] = options({k: d["post-processor.checksum"]["properties"][k] for k in pp_common})
    for t in ("checksum", "compress", "manifest", "vagrant", "artifice", "shell-local"):
        out["post-processor." + t] = options(d["post-processor." + t]["properties"], skip=pp_common)
    return out


def main():
    with open(SCHEMA) as f:
        schema = json.load(f)
    with open(PAGE) as f:
        page = f.read()
    new = page
    for name, lines in sections(schema).items():
        begin = '.\\" BEGIN OPTIONS ' + name + "\n"
        end = '.\\" END OPTIONS ' + name + "\n"
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        if not pattern.search(new):
            sys.exit("gen-template-options: no markers for " + name + " in " + PAGE)
        new = pattern.sub(lambda _: begin + "\n".join(lines) + "\n" + end, new)
    if "--check" in sys.argv[1:]:
        if new != page:
            sys.exit("gen-template-options: man/kiln-template.5 is out of date; run man/gen-template-options.py")
        return
    if new != page:
        with open(PAGE, "w") as f:
            f.write(new)


if __name__ == "__main__":
    main()
