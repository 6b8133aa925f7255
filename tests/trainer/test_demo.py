import yaml

from trainer import demo


def test_demo_prints_the_three_probe_results(tmp_path, capsys):
    config = yaml.safe_load(demo.DEFAULT_CONFIG.read_text())
    config["epochs"] = 2
    short = tmp_path / "short.yaml"
    short.write_text(yaml.safe_dump(config))
    demo.main(["--config", str(short), "--output-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out
    for row in ("SimCLR-pretrained encoder", "random-init encoder", "raw pixels"):
        assert row in out
    assert (tmp_path / "run" / "checkpoints").is_dir()
