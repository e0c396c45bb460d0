from pathlib import Path


def test_provenance_names_package_modules_as_python_dash_m(monkeypatch):
    import lit_inheritune
    from lit_inheritune.provenance import provenance

    pkg = Path(lit_inheritune.__file__).parent
    monkeypatch.setattr("sys.argv", [str(pkg / "__main__.py"), "experiment=demo"])
    assert provenance()["command"] == "python -m lit_inheritune experiment=demo"
    monkeypatch.setattr("sys.argv", [str(pkg / "analyze.py"), "ckpt=a b"])
    assert provenance()["command"] == "python -m lit_inheritune.analyze 'ckpt=a b'"
    assert provenance()["commit"]


def test_regenerated_results_do_not_make_the_code_dirty(tmp_path):
    import subprocess

    from lit_inheritune.provenance import git_commit

    git = lambda *args: subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    (tmp_path / "code.py").write_text("x = 1\n")
    (tmp_path / "experiments" / "results" / "tables.md").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    (tmp_path / "experiments" / "results" / "tables.md").write_text("regenerated\n")
    assert not git_commit(tmp_path / "experiments").endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path / "experiments").endswith("+dirty")
