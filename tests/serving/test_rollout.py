"""serving.rollout moves the labels of a rollout models.config (canary, promote, rollback,
retire), and serving/models.rollout.config parses as TF Serving's ModelServerConfig."""

import shutil

import pytest

from serving import rollout
from serving.local_server.versions import read_model_config


def state(path):
    model = rollout.read(str(path)).model_config_list.config[0]
    return sorted(model.model_version_policy.specific.versions), dict(model.version_labels)


def test_canary_promote_rollback_retire(tmp_path, capsys):
    path = tmp_path / "models.config"
    shutil.copy("serving/models.rollout.config", path)
    config = read_model_config(str(path))
    assert (config.name, config.specific, dict(config.labels)) == ("queryrec", (1,), {"stable": 1})

    def run(*args):
        assert rollout.main(["--config", str(path), *args]) == 0
        return state(path)

    assert run("canary", "2") == ([1, 2], {"stable": 1, "canary": 2})
    assert run("rollback") == ([1], {"stable": 1})                      # canary withdrawn
    assert run("canary", "3") == ([1, 3], {"stable": 1, "canary": 3})
    assert run("promote") == ([1, 3], {"stable": 3, "previous": 1})
    assert run("rollback") == ([1], {"stable": 1})                      # back to 1, 3 unloaded
    run("canary", "3")
    run("promote")
    assert run("retire") == ([3], {"stable": 3})
    assert path.read_text().startswith("# TF Serving model server configuration")  # kept
    for args, message in ((["promote"], "no canary"), (["canary", "3"], "already stable"),
                          (["canary"], "takes a version")):
        with pytest.raises(SystemExit):
            rollout.main(["--config", str(path), *args])
        assert message in capsys.readouterr().err
    assert state(path) == ([3], {"stable": 3})  # a refused action leaves the file alone
