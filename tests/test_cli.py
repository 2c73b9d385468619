import sys
import time

from conftest import REPO, catdog, run


def test_help_lists_the_five_commands_without_importing_tensorflow():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from catdog.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print(result.output)\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'PIL', 'numpy', 'pandas', 'dvc') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = run([sys.executable, "-c", code])
    for command in ("fetch", "split", "train", "evaluate", "predict-folder"):
        assert command in result.stdout


def test_console_script_help_is_fast():
    started = time.perf_counter()
    result = catdog("--help")
    elapsed = time.perf_counter() - started
    assert "predict-folder" in result.stdout
    assert elapsed < 3.0, f"catdog --help took {elapsed:.2f}s (target: under one second on an idle machine)"


def test_importing_the_package_is_cheap():
    run([sys.executable, "-c", "import sys, catdog; assert 'tensorflow' not in sys.modules and 'PIL' not in sys.modules"])


def test_bad_params_file_gives_one_error_line_and_no_traceback(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("  epochs:", "  epoks:"))
    result = catdog("split", "--params", params, "--images", tmp_path, "--out-dir", tmp_path / "s", "--report", tmp_path / "r.json", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {params}: train.epoks: unknown key"
