"""Print the Qt-visible API (properties, signals, slots, public methods) of C++ classes from their headers.

This is how the tables in ``Testing/test_slicer_api_names.py`` were made; run it again when the
supported Slicer version changes and paste its output there.  Inputs are header *files*
(take them from the tagged sources, e.g. ``git -C Slicer show v5.10.0:Libs/MRML/Widgets/qMRMLWidget.h``)::

    python Testing/tools/extract_qt_api.py [--python] CLASS=HEADER [CLASS=HEADER ...]

Only what PythonQt and Qt Designer can reach is kept: ``Q_PROPERTY`` names, signals and public
slots as normalized signatures (each default argument also gives the shorter signature Qt
accepts), public method names (``Q_INVOKABLE`` included) and PythonQt decorator methods
(``static_<Class>_<name>`` in a ``*PythonQtDecorators.h`` header passed as ``CLASS=HEADER`` after
the class's own header).  ``--python`` prints the entries of the test's table.
The parser is deliberately simple (comments and preprocessor lines dropped, every ``#if``
branch kept): good for these headers, not a C++ parser.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

NON_DECLARATION_MACROS = re.compile(
    r"^(Q_OBJECT|QVTK_OBJECT|Q_GADGET|Q_ENUMS|Q_ENUM|Q_FLAGS|Q_FLAG|Q_DECLARE_PRIVATE|Q_DECLARE_PUBLIC|Q_DISABLE_COPY"
    r"|Q_DISABLE_COPY_MOVE|Q_PRIVATE_SLOT|Q_CLASSINFO|Q_DECLARE_FLAGS|Q_DECLARE_PRIVATE_D|QT_SIZEPOLICY_CONSTEXPR"
    r"|Q_PROPERTY|Q_PRIVATE_PROPERTY|QDOC_PROPERTY|Q_INTERFACES|Q_DECLARE_OPERATORS_FOR_FLAGS)\b"
)
SPECIFIERS = re.compile(
    r"\b(?:Q_INVOKABLE|Q_REQUIRED_RESULT|Q_DECL_\w+|Q_SLOT|Q_SIGNAL|Q_SCRIPTABLE|virtual|static|inline|explicit"
    r"|constexpr|friend|QT_DEPRECATED|Q_NORETURN|\w+_EXPORT)\b"
    r"|\b(?:QT_DEPRECATED_X|QT_DEPRECATED_VERSION_X_\w+|QT_DEPRECATED_VERSION_\w+|Q_REVISION)\s*(?:\([^)]*\))?"
)
ACCESS = re.compile(r"^(public|protected|private)\s*(Q_SLOTS|slots)?\s*:|^(Q_SIGNALS|signals)\s*:")
SIMPLE_TYPES = {"int", "char", "long", "short", "double", "float", "bool", "unsigned", "signed"}


def strip_source(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.DOTALL)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r'"(?:[^"\\\n]|\\.)*"', '""', text)  # string literals (deprecation messages hold "f()")
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def matching(text: str, start: int, opening: str, closing: str) -> int:
    """Index just after the bracket closing the one at ``start``."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == opening:
            depth += 1
        elif text[index] == closing:
            depth -= 1
            if depth == 0:
                return index + 1
    raise ValueError(f"unbalanced {opening}{closing}")


def class_body(text: str, name: str) -> tuple[str, str]:
    """(first public base class, body) of ``class ... name : public Base { body };``."""
    pattern = re.compile(rf"\bclass\s+(?:\w+\s+)*{name}\s*(?:final\s*)?(?::\s*([^{{;]+))?\{{")
    match = pattern.search(text)
    if match is None:
        raise ValueError(f"class {name} not found")
    bases = re.findall(r"public\s+([\w:]+)", match.group(1) or "")
    start = match.end() - 1
    return (bases[0] if bases else ""), text[start + 1:matching(text, start, "{", "}") - 1]


def statements(body: str):
    """(access, statement text) for each member declaration; macros without ';' come out alone."""
    access, index, current = "private", 0, ""
    while index < len(body):
        rest = body[index:]
        if not current.strip():
            stripped = rest.lstrip()
            skipped = len(rest) - len(stripped)
            found = ACCESS.match(stripped)
            if found:
                access = "signals" if found.group(3) else found.group(1) + (" slots" if found.group(2) else "")
                index += skipped + found.end()
                continue
            macro = NON_DECLARATION_MACROS.match(stripped)
            if macro:
                end = skipped + macro.end()
                if body[index + end:].lstrip().startswith("("):
                    paren = body.index("(", index + end)
                    end = matching(body, paren, "(", ")") - index
                yield access, body[index + skipped:index + end]
                index += end
                continue
        char = body[index]
        if char == "(":
            end = matching(body, index, "(", ")")
            current += body[index:end]
            index = end
        elif char == "{":  # inline body or brace initializer: ends the declaration
            index = matching(body, index, "{", "}")
            yield access, current
            current = ""
            if body[index:].lstrip().startswith(";"):
                index = body.index(";", index) + 1
        elif char == ";":
            yield access, current
            current, index = "", index + 1
        else:
            current += char
            index += 1


def normalized_type(parameter: str) -> str:
    parameter = parameter.split("=")[0].strip()
    tokens = re.findall(r"[\w:]+(?:<[^>]*>)?|\*|&", parameter)
    if len(tokens) > 1 and re.fullmatch(r"\w+", tokens[-1]) and tokens[-1] not in SIMPLE_TYPES:
        tokens = tokens[:-1]  # the parameter's name
    text = " ".join(tokens).replace(" *", "*").replace(" &", "&")
    if text.startswith("const ") and text.endswith("&"):
        text = text[len("const "):-1]  # Qt's normalizedSignature: const T& -> T
    return text.rstrip("&").strip()


def split_top_level(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char in "(<"
        depth -= char in ")>"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [part for part in parts + [current] if part.strip()]


def signatures(name: str, parameters: str) -> list[str]:
    """Every signature Qt accepts for ``name(parameters)``: one per number of defaulted arguments left out."""
    params = [p for p in split_top_level(parameters) if normalized_type(p) != "QPrivateSignal"]  # moc drops it
    types = [normalized_type(p) for p in params]
    first_default = next((i for i, p in enumerate(params) if "=" in p), len(params))
    return [f"{name}({','.join(types[:count])})" for count in range(first_default, len(params) + 1)]


def member_and_parameters(statement: str) -> tuple[str, str] | None:
    """(function name, parameter text) of a member function declaration, else None."""
    declaration = SPECIFIERS.sub(" ", statement)
    bare = declaration
    while re.search(r"<[^<>]*>", bare):  # template arguments may hold "int(...)"
        bare = re.sub(r"<[^<>]*>", "", bare)
    match = re.search(r"(~?\w+)\s*\(", re.sub(r"^\s*template\s*", "", bare))
    if match is None or "operator" in bare.split("(")[0]:
        return None
    member = match.group(1)
    start = re.search(rf"{re.escape(member)}\s*\(", declaration).end() - 1
    return member, declaration[start + 1:matching(declaration, start, "(", ")") - 1]


def parse_class(text: str, name: str) -> dict:
    base, body = class_body(strip_source(text), name)
    api = {"base": base, "properties": set(), "signals": set(), "slots": set(), "methods": set()}
    for access, statement in statements(body):
        statement = " ".join(statement.split())
        if statement.startswith(("Q_PROPERTY", "Q_PRIVATE_PROPERTY")):
            api["properties"].add(re.search(r"(\w+)\s+(?:READ|MEMBER)\b", statement).group(1))
            continue
        if NON_DECLARATION_MACROS.match(statement) or "(" not in statement or access.startswith("private"):
            continue
        found = member_and_parameters(statement)
        if found is None:
            continue
        member, parameters = found
        if member in (name, "~" + name) or member.startswith("Q_"):
            continue
        if access == "signals":
            api["signals"].update(signatures(member, parameters))
        elif access == "public slots":
            api["slots"].update(signatures(member, parameters))
        elif access == "public":
            api["methods"].add(member)
    return api


def parse_decorators(text: str, name: str) -> set[str]:
    """PythonQt decorator methods that appear on ``name`` objects (static_<name>_<method>)."""
    return set(re.findall(rf"\bstatic_{name}_(\w+)\s*\(", strip_source(text)))


def python_entry(name: str, api: dict, width: int = 110) -> str:
    """``"name": ClassApi(base=..., properties=..., ...),`` wrapped to ``width`` columns (the test's table format)."""
    lines = [f'    "{name}": ClassApi(', f'        base="{api["base"]}",']
    for kind in ("properties", "signals", "slots", "methods"):
        words, current, chunks = sorted(api[kind]), "", []
        for word in words:
            if current and len(current) + len(word) + 20 > width:
                chunks.append(current)
                current = ""
            current = f"{current} {word}" if current else word
        chunks.append(current)
        body = "\n".join(f'            "{chunk} "' for chunk in chunks).rstrip('"').rstrip() + '"'
        lines.append(f"        {kind}=(\n{body}),")
    lines.append("    ),")
    return "\n".join(lines)


def main(arguments: list[str]) -> int:
    as_python = "--python" in arguments
    apis: dict[str, dict] = {}
    for argument in (a for a in arguments if a != "--python"):
        name, path = argument.split("=", 1)
        text = Path(path).read_text(encoding="utf-8", errors="replace")
        if "PythonQtDecorators" in path:
            apis[name]["methods"] |= parse_decorators(text, name)  # after the class's own header
            continue
        apis[name] = parse_class(text, name)
    for name, api in apis.items():
        if as_python:
            print(python_entry(name, api))
            continue
        print(f"{name} : {api['base']}")
        for kind in ("properties", "signals", "slots", "methods"):
            print(f"  {kind}: {' '.join(sorted(api[kind]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
