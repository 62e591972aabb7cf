"""The README's commands stay true: CI runs its test command; the tests run its train command."""

import re

from conftest import ROOT


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_setup_block_is_install_then_default_train():
    readme = (ROOT / "README.md").read_text()
    setup = bash_blocks(readme)[0].strip().splitlines()
    assert setup == ['pip install -e ".[dev]"', "python train.py"]
    # test_train.test_readme_default_run_solves_cartpole_with_offline_wandb runs `python train.py`.


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    test_cmd = bash_blocks(readme)[1].strip()
    assert test_cmd == "python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd in [line.strip() for line in ci]
    assert any("pip install" in line and '-e ".[dev]"' in line for line in ci)


def test_override_examples_compose():
    from conftest import compose_cfg
    from ppo_lab.config import to_typed

    readme = (ROOT / "README.md").read_text()
    examples = [b for b in bash_blocks(readme) if "train.py env=lunarlander" in b][0]
    for line in examples.strip().splitlines():
        args = line.split("#")[0].split()[2:]
        if "-m" in args:
            args = [a.split(",")[0] for a in args if a != "-m"]
        to_typed(compose_cfg(args))


def test_python_api_example_runs(tmp_path):
    import subprocess
    import sys

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Python API", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert float(proc.stdout.strip().splitlines()[-1]) < 0  # Pendulum returns are negative
    assert list(tmp_path.glob("outputs/*/*/checkpoints/final.pt"))


def test_share_section_package_command_and_load_snippet_run(tmp_path):
    """The README's Hub commands: `package` (the push needs the network: tests/test_hub.py fakes it)
    and the package-dir line of its load snippet."""
    import os
    import subprocess
    import sys

    import ppo_lab

    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Share a trained agent", 1)[1].split("\n## ", 1)[0]
    package_cmd = [line for line in bash_blocks(section)[0].splitlines() if " package " in line][0]
    run_dir = ppo_lab.train(["debug=fast", "total_timesteps=256"], run_dir=tmp_path / "run")["run_dir"]
    args = package_cmd.split("#")[0].split()[1:]  # python -m ppo_lab.hub package <run dir> <out dir>
    args[3] = run_dir
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, *args, "video=false", "eval_seeds=[0]", "eval_episodes=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    load_line = [line for line in re.findall(r"```python\n(.*?)```", section, flags=re.S)[0].splitlines()
                 if "hf://" not in line and "load(" in line][0]
    namespace: dict = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec("import ppo_lab\n" + load_line.split("#")[0], namespace)
    finally:
        os.chdir(cwd)
    assert namespace["agent"].global_step == 256
