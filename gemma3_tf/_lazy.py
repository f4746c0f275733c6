"""Package attributes imported on first use (PEP 562), so that `import gemma3_tf` and the command line's
`--help` do not load TensorFlow (3 s and a screen of its logs)."""

import importlib


def lazy_attributes(package, exports):
    """(`__getattr__`, `__dir__`) for `package` from `exports`: {attribute: "module" or "module:name"}."""

    def __getattr__(name):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = exports[name].partition(":")
        value = importlib.import_module(module)
        return getattr(value, attribute) if attribute else value

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__
