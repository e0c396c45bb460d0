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
