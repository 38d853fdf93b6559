"""Sphinx helpers for the pyro-vae docs.

* ``registry-table`` directive: a table of the names registered in one of the library's
  registries (name, constructor, options with defaults, first line of the docstring),
  generated at build time, so the documentation always lists what is registered.
* ``config-defaults`` directive: the library's default config as YAML, from
  ``pyro_vae.config.DEFAULTS`` at build time.
* ``cli-help`` directive: the help text of the ``pyro-vae`` command or a subcommand.
* ``api-modules`` directive: an ``automodule`` section for every public submodule.
* ``names-of`` directive: the keys of a mapping, e.g. the activation names.
* ``missing-reference`` handler: a Python cross-reference that Sphinx's exact lookup does
  not resolve (``:func:`log_likelihood``` written in another module's docstring, a
  re-exported name) is retried as a fuzzy lookup, which matches a unique documented
  object whose full name ends with the target (or, for ``pyro_vae.`` names, its last part).
* ``autodoc-skip-member`` handler: the names re-exported by ``pyro_vae`` (``VAE``,
  ``log_likelihood``, the errors, ...) are documented once, at the top level, and skipped
  where ``automodule`` would list them again.
"""

import argparse
import importlib
import inspect
import os
import pkgutil
import re

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx import addnodes
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_refnode, nested_parse_with_titles

_ROLE = re.compile(r":[\w:]+:`~?([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")


def _import(path):
    module, _, attribute = path.rpartition(".")
    return getattr(importlib.import_module(module), attribute)


def _summary(obj):
    """The first sentence-ish line of a docstring with roles reduced to their text."""
    doc = inspect.getdoc(obj) or ""
    first = doc.strip().split("\n\n")[0].replace("\n", " ")
    return _ROLE.sub(lambda m: f"``{m.group(1).split('.')[-1]}``", first)


def _inline(text):
    """Text with ``literal`` spans -> list of docutils inline nodes."""
    out, position = [], 0
    for match in _LITERAL.finditer(text):
        if match.start() > position:
            out.append(nodes.Text(text[position : match.start()]))
        out.append(nodes.literal(match.group(1), match.group(1)))
        position = match.end()
    if position < len(text):
        out.append(nodes.Text(text[position:]))
    return out


def _options(constructor, hidden):
    try:
        params = inspect.signature(constructor).parameters.values()
    except (TypeError, ValueError):
        return ""
    shown = []
    for p in params:
        if p.name in hidden or p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        shown.append(p.name if p.default is p.empty else f"{p.name}={p.default!r}")
    return ", ".join(shown)


class RegistryTable(SphinxDirective):
    """``.. registry-table:: pyro_vae.priors.PRIORS`` with ``:context: latent_dim``."""

    required_arguments = 1
    option_spec = {"context": directives.unchanged}

    def _cell(self, *children):
        entry = nodes.entry()
        paragraph = nodes.paragraph()
        paragraph.extend(children)
        entry += paragraph
        return entry

    def run(self):
        registry = _import(self.arguments[0])
        hidden = set((self.options.get("context") or "").replace(",", " ").split())
        headers = ["name", "constructor", "options (defaults)", "description"]
        table = nodes.table(classes=["registry-table"])
        group = nodes.tgroup(cols=len(headers))
        table += group
        for width in (14, 18, 28, 40):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        row = nodes.row()
        for title in headers:
            row += self._cell(nodes.Text(title))
        head += row
        group += head
        body = nodes.tbody()
        for name in registry.names():
            constructor = registry.get(name)
            target = f"{constructor.__module__}.{constructor.__qualname__}"
            ref = addnodes.pending_xref(
                "", refdomain="py", reftype="obj", reftarget=target, refexplicit=True,
                refwarn=False,
            )
            ref += nodes.literal(constructor.__qualname__, constructor.__qualname__)
            options = _options(constructor, hidden)
            row = nodes.row()
            row += self._cell(nodes.literal(name, name))
            row += self._cell(ref)
            row += self._cell(nodes.literal(options, options) if options else nodes.Text("none"))
            row += self._cell(*_inline(_summary(constructor)))
            body += row
        group += body
        return [table]


class ConfigDefaults(SphinxDirective):
    """``.. config-defaults::``: ``pyro_vae.config.DEFAULTS`` as a YAML block."""

    def run(self):
        import yaml

        defaults = importlib.import_module("pyro_vae.config").DEFAULTS

        class Dumper(yaml.SafeDumper):
            pass

        def flow_list(dumper, data):
            return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)

        Dumper.add_representer(list, flow_list)
        Dumper.add_representer(tuple, flow_list)
        text = yaml.dump(defaults, Dumper=Dumper, sort_keys=False, default_flow_style=False)
        block = nodes.literal_block(text, text, language="yaml")
        return [block]


class CliHelp(SphinxDirective):
    """``.. cli-help:: [subcommand]``: the ``pyro-vae`` parser's help text, at build time."""

    optional_arguments = 1

    def run(self):
        parser = importlib.import_module("pyro_vae.cli")._parser()
        if self.arguments:
            subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = subparsers.choices[self.arguments[0]]
        columns = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "90"  # argparse wraps to the terminal width; fix it
        try:
            text = parser.format_help()
        finally:
            if columns is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = columns
        return [nodes.literal_block(text, text, language="text")]


class ApiModules(SphinxDirective):
    """``.. api-modules:: pyro_vae`` with ``:order: model marginal ...``.

    One section with an ``automodule`` per public submodule of the package: those named in
    ``:order:`` first, in that order, then any others alphabetically, so that a new module
    appears in the reference without editing it.
    """

    required_arguments = 1
    option_spec = {"order": directives.unchanged, "exclude": directives.unchanged}

    def run(self):
        package = importlib.import_module(self.arguments[0])
        found = sorted(
            info.name for info in pkgutil.iter_modules(package.__path__)
            if not info.name.startswith("_")
        )
        excluded = set((self.options.get("exclude") or "").split())
        order = [m for m in (self.options.get("order") or "").split() if m in found]
        names = order + [m for m in found if m not in order and m not in excluded]
        lines = []
        for name in names:
            full = f"{package.__name__}.{name}"
            title = f"``{full}``"
            lines += [title, "-" * len(title), "", f".. automodule:: {full}", ""]
        content = StringList(lines, source=self.get_source_info()[0])
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, content, container)
        return container.children


class NamesOf(SphinxDirective):
    """``.. names-of:: pyro_vae.networks.ACTIVATIONS``: a paragraph listing the keys of a
    mapping (or the names of a registry), with ``:prefix:`` text before them."""

    required_arguments = 1
    option_spec = {"prefix": directives.unchanged}

    def run(self):
        obj = _import(self.arguments[0])
        names = obj.names() if hasattr(obj, "names") else sorted(obj)
        paragraph = nodes.paragraph()
        prefix = self.options.get("prefix")
        if prefix:
            paragraph += _inline(prefix + " ")
        for i, name in enumerate(names):
            if i:
                paragraph += nodes.Text(", " if i < len(names) - 1 else " and ")
            paragraph += nodes.literal(str(name), str(name))
        paragraph += nodes.Text(".")
        return [paragraph]


_EXPORTED = set()


def _init(app):
    """Ids of the objects ``pyro_vae`` re-exports (documented once, at the top level)."""
    package = importlib.import_module("pyro_vae")
    for name in package.__all__:
        _EXPORTED.add(id(getattr(package, name)))


def skip_reexported(app, what, name, obj, skip, options):
    if what == "module" and id(obj) in _EXPORTED:
        return True
    return None


def retry_fuzzy(app, env, node, contnode):
    """Resolve an unresolved Python reference when exactly one object ends with its target."""
    if node.get("refdomain") != "py" or node.get("refspecific"):
        return None
    domain = env.get_domain("py")
    target = node["reftarget"].lstrip("~.")
    # the full target, then, for the library's own names, its last part
    # (``pyro_vae.priors.PRIORS`` is documented as ``pyro_vae.PRIORS``, the exported name)
    candidates = [target]
    if target.startswith("pyro_vae."):
        candidates.append(target.rpartition(".")[2])
    for candidate in candidates:
        matches = domain.find_obj(
            env, node.get("py:module"), node.get("py:class"), candidate, node["reftype"], searchmode=1
        )
        if len(matches) == 1:
            break
    else:
        return None
    name, entry = matches[0]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode, name)


def setup(app):
    app.add_directive("registry-table", RegistryTable)
    app.add_directive("config-defaults", ConfigDefaults)
    app.add_directive("cli-help", CliHelp)
    app.add_directive("api-modules", ApiModules)
    app.add_directive("names-of", NamesOf)
    app.connect("builder-inited", _init)
    app.connect("autodoc-skip-member", skip_reexported)
    app.connect("missing-reference", retry_fuzzy)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
