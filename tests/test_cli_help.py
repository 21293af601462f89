"""The import surface and the command line as a newcomer meets them: no torch for --help, no public name
shadowed by a submodule, every option's default shown, examples and next steps."""

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import dp_autoencoder
from dp_autoencoder.cli import ADAPTIVE_N0, ADAPTIVE_N_MAX, PRESET_NAMES, HelpFormatter, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    """``code`` in a fresh interpreter (this one has imported torch and, through other tests, maybe the old
    dp_autoencoder.stack); its stdout, and a failure with its stderr."""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_help_version_and_models_do_not_import_torch():
    out = run_python(
        "import sys, contextlib, io\n"
        "import dp_autoencoder as d\n"
        "assert 'torch' not in sys.modules, 'import dp_autoencoder'\n"
        "d.list_pretrained(); d.get_pretrained_cfg('natural-ae-L0.1'); d.resolve_model('natural-ae-L0.1', 'front-end')\n"
        "from dp_autoencoder.cli import main\n"
        "for argv in (['--help'], ['--version'], ['certify', '--help'], ['report', '--help'], ['train', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main(argv)\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, argv\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['models']) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm', 'numpy', 'scipy')))\n")
    assert out.strip() == "[]"


def test_the_function_stack_is_not_shadowed_by_a_submodule():
    out = run_python(
        "import dp_autoencoder as d, dp_autoencoder.classifiers, dp_autoencoder.api, dp_autoencoder.pipeline\n"
        "import dp_autoencoder.cli, dp_autoencoder.certify, dp_autoencoder.attacks, dp_autoencoder.audit\n"
        "import types\n"
        "assert d.stack is dp_autoencoder.api.stack, d.stack\n"
        "for name in d.__all__:\n"
        "    assert not isinstance(getattr(d, name), types.ModuleType), name\n"
        "print('ok')\n")
    assert out.strip() == "ok"


def test_the_old_module_path_works_one_release_with_a_warning_and_stays_callable():
    out = run_python(
        "import warnings\n"
        "import dp_autoencoder as d, dp_autoencoder.api as api, dp_autoencoder.pipeline as pipeline\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    from dp_autoencoder.stack import Classify, DefendedClassifier, Preprocessing, state_fingerprint\n"
        "assert [w.category for w in caught] == [DeprecationWarning], caught\n"
        "assert 'dp_autoencoder.pipeline' in str(caught[0].message)\n"
        "assert caught[0].filename == '<string>'  # points at the importing line, not at importlib\n"
        "assert Classify is pipeline.Classify and Preprocessing is pipeline.Preprocessing\n"
        "api.stack = lambda *a, **k: ('forwarded', a, k)\n"
        "assert d.stack(1, 2, device='cpu') == ('forwarded', (1, 2), {'device': 'cpu'}), d.stack\n"
        "print('ok')\n")
    assert out.strip() == "ok"


def test_the_cli_constants_equal_the_library():
    from dp_autoencoder.adaptive import DEFAULT_N0, DEFAULT_N_MAX
    from dp_autoencoder.autoencoder import PRESETS

    assert tuple(PRESETS) == PRESET_NAMES
    assert (ADAPTIVE_N0, ADAPTIVE_N_MAX) == (DEFAULT_N0, DEFAULT_N_MAX)


def subparsers():
    parser = build_parser()
    return parser, parser._subparsers._group_actions[0].choices


def test_every_option_shows_its_default():
    parser, commands = subparsers()
    missing = []
    for name, sub in commands.items():
        formatter = HelpFormatter(name)
        for action in sub._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._StoreTrueAction)):
                continue
            text = formatter._get_help_string(action) % {"default": action.default}
            if "default" not in text and "required" not in text:
                missing.append(f"dpae {name} {action.option_strings[0]}")
    assert missing == []
    help_text = " ".join(commands["certify"].format_help().split())
    assert "(default: 0.001)" in help_text and "(default: 0.95)" in help_text  # --alpha, --eta
    assert "(default 300, the paper's" in help_text  # stated in the text: not repeated
    assert "(default 0.1) (default" not in " ".join(commands["train"].format_help().split())


def test_top_level_help_has_examples_and_report_help_the_next_step(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "examples:" in top and "dpae models" in top and "dpae certify" in top and "hf-hub:ORG/NAME" in top
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    assert "dpae report runs/certify --out runs/report" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"dpae {dp_autoencoder.__version__}"


def test_report_folder_of_the_next_step():
    from dp_autoencoder.cli import _report_folder

    assert _report_folder("runs/certify") == str(Path("runs/report"))
    assert _report_folder("runs/cert-L0.3") == str(Path("runs/cert-L0.3-report"))


def test_deprecated_cli_pretrained_warns():
    import dp_autoencoder.cli as cli

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        root = cli.PRETRAINED
    assert root == ROOT / "pretrained" and caught[0].category is DeprecationWarning
