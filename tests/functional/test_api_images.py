"""Images describe themselves: ``GET /api/images/{name}``, ``GET /api/images?detail=true``, and ``manage.py``'s side."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from chalicelib import admin, image_meta
from chalicelib.errors import InvalidInput
from chalicelib.models import Image
from infra.images import build

with pytest.MonkeyPatch.context() as _mp:  # as test_manage.py: never re-exec into another interpreter
    _mp.setenv("OPENDEVELOP_NO_VENV", "1")
    import manage

GO = {
    "language": "Go",
    "version": "1.19.8",
    "run": "go run {file}",
    "extensions": [".go"],
}
GCC = {
    "language": "C++",
    "version": "12.2.0",
    "run": "g++ -O2 -o main {file} && ./main",
    "extensions": [".cpp", ".cc", ".c"],
    "run_by_extension": {".c": "gcc -O2 -o main {file} -lm && ./main"},
}


@pytest.fixture
def catalogue(world):
    admin.image_create("go", "opendevelop/go:latest", "Go (Debian 12)", **GO)
    admin.image_create("gcc", "opendevelop/gcc:latest", "C and C++", **GCC)
    admin.image_create("old", "opendevelop/old:1", "retired", enabled=False, language="Cobol", run="cobc {file}")
    return world


def test_the_list_stays_the_seeds_list_of_names(catalogue):
    assert catalogue.get("/api/images").json_body == ["base", "gcc", "go"]


def test_one_image_describes_itself(catalogue):
    response = catalogue.get("/api/images/gcc")

    assert response.status_code == 200
    assert response.json_body == {"name": "gcc", "description": "C and C++", **GCC}


def test_detail_true_describes_every_enabled_image_by_name(catalogue):
    response = catalogue.get("/api/images?detail=true")

    assert response.status_code == 200
    assert [i["name"] for i in response.json_body] == ["base", "gcc", "go"]
    base, _, go = response.json_body
    assert go == {"name": "go", "description": "Go (Debian 12)", "run_by_extension": {}, **GO}
    # An image registered as the seed did, with a description only, is described with empty fields.
    assert base == {
        "name": "base",
        "description": "Debian 12 + Python 3",
        "language": "",
        "version": "",
        "run": "",
        "extensions": [],
        "run_by_extension": {},
    }
    assert catalogue.get("/api/images?detail=false").json_body == ["base", "gcc", "go"]


@pytest.mark.parametrize("name", ["nope", "old", "GO", "x" * 3000, "a b"])
def test_an_unknown_or_disabled_image_is_404_as_the_api_words_it(catalogue, name):
    response = catalogue.get(f"/api/images/{name}")

    assert response.status_code == 404
    shown = name[:64]
    assert response.json_body == {"Code": "NotFoundError", "Message": f"no image '{shown}' (see GET /api/images)"}


def test_a_bad_detail_value_is_a_400_naming_it(catalogue):
    response = catalogue.get("/api/images?detail=maybe")

    assert response.status_code == 400
    assert response.json_body["Message"] == "detail: 'maybe' must be true or false"


def test_describing_an_image_needs_credentials(catalogue):
    assert catalogue.get("/api/images/go", headers={}).status_code == 401
    assert catalogue.get("/api/images?detail=true", headers={}).status_code == 401


def test_the_answers_are_what_the_openapi_document_says(catalogue):
    doc = catalogue.get("/api/openapi.json").json_body
    operation = doc["paths"]["/api/images/{name}"]["get"]
    assert [p["name"] for p in doc["paths"]["/api/images"]["get"]["parameters"]] == ["detail"]
    for path, status, schema in [
        ("/api/images/go", 200, operation["responses"]["200"]),
        ("/api/images/nope", 404, operation["responses"]["404"]),
        ("/api/images?detail=true", 200, doc["paths"]["/api/images"]["get"]["responses"]["200"]),
        ("/api/images", 200, doc["paths"]["/api/images"]["get"]["responses"]["200"]),
    ]:
        response = catalogue.get(path)
        assert response.status_code == status
        validator = Draft202012Validator(
            {**schema["content"]["application/json"]["schema"], "components": doc["components"]}
        )
        assert not [e.message for e in validator.iter_errors(response.json_body)], path
    assert set(doc["components"]["schemas"]["Image"]["properties"]) == set(catalogue.get("/api/images/go").json_body)


# What an image may say of itself: checked the same way for image-create and for recipes.


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"run": "go run main.go"}, "run: must name the program's file as {file}"),
        ({"run": "go run {files}"}, "run: unknown placeholder {files}"),
        ({"run": "python {file}\nrm -rf /"}, "run: must be one line"),
        ({"extensions": [".c++/x"]}, "extensions: '.c++/x' is not a file extension"),
        ({"extensions": [".go"]}, "run: an image that claims file extensions needs a run template"),
        ({"run": "cc {file}", "extensions": [".c"], "run_by_extension": {".h": "cc {file}"}}, "'.h' is not one of"),
    ],
)
def test_a_bad_description_is_refused_naming_the_field(fields, error):
    with pytest.raises(InvalidInput) as caught:
        image_meta.check(fields)
    assert error in caught.value.message


def test_extensions_are_normalised_and_templates_filled_with_quoted_names():
    assert image_meta.parse_extensions("x", "cpp, .CC .cpp") == [".cpp", ".cc"]
    assert image_meta.fill("javac -d . {file} && java {stem}", "src/Main.java") == (
        "javac -d . src/Main.java && java Main"
    )
    assert image_meta.fill("python {file}", "my prog.py") == "python 'my prog.py'"
    assert image_meta.template_for(GCC, "x.C") == GCC["run_by_extension"][".c"]
    assert image_meta.template_for(GCC, "x.cpp") == GCC["run"]


def test_every_catalogue_recipe_is_valid_and_claims_its_extensions_alone():
    names = build.catalogue()

    assert names[0] == "base"
    assert set(names) == {"base", "python", "node", "gcc", "go", "java", "ruby", "rust", "php"}
    claimed: dict[str, str] = {}
    for name in names:
        recipe = build.load(name)
        assert recipe.get("smoke"), f"{name} has no smoke program"
        for ext in recipe["extensions"]:
            assert ext not in claimed, f"{ext} is claimed by {claimed.get(ext)} and {name}"
            claimed[ext] = name
    assert claimed[".go"] == "go" and claimed[".py"] == "python" and claimed[".c"] == "gcc"


def test_the_recipe_hash_follows_the_recipe_and_its_parent(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENDEVELOP_IMAGE_RECIPES", str(tmp_path))
    (tmp_path / "jq").mkdir()
    (tmp_path / "jq" / "image.json").write_text(json.dumps({"from": "base", "packages": ["jq"]}))
    first = build.recipe_hash("jq", "aaaa")

    assert build.recipe_hash("jq", "aaaa") == first
    assert build.recipe_hash("jq", "bbbb") != first  # a rebuilt base rebuilds what is built on it
    (tmp_path / "jq" / "image.json").write_text(json.dumps({"from": "base", "packages": ["jq", "bc"]}))
    assert build.recipe_hash("jq", "aaaa") != first


# manage.py


@pytest.fixture
def cli(settings, capsys):
    def run(command_line: str) -> tuple[int, str, str]:
        try:
            code = manage.main(shlex.split(command_line))
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_image_create_and_image_list_carry_the_description(cli):
    code, _, err = cli(
        "image-create --name=gcc --docker-image=opendevelop/gcc:latest --description='C and C++' --language=C++ "
        "--version=12.2.0 --run='g++ -O2 -o main {file} && ./main' --extensions=cpp,.cc,.c "
        "--run-for='.c=gcc -O2 -o main {file} -lm && ./main'"
    )
    assert (code, err) == (0, "")
    row = Image.get("gcc")
    assert (row.language, row.version, row.extensions) == ("C++", "12.2.0", [".cpp", ".cc", ".c"])
    assert row.run_by_extension == {".c": "gcc -O2 -o main {file} -lm && ./main"}

    code, out, _ = cli("image-list")
    header, line = out.splitlines()
    assert header.split() == ["NAME", "DOCKER_IMAGE", "ENABLED", "LANGUAGE", "VERSION", "EXTENSIONS", "RUN"]
    assert line.split()[:7] == ["gcc", "opendevelop/gcc:latest", "True", "C++", "12.2.0", ".cpp", ".cc"]
    assert line.endswith("g++ -O2 -o main {file} && ./main")
    listed = json.loads(cli("image-list --json")[1])
    assert listed[0]["run"] == "g++ -O2 -o main {file} && ./main" and listed[0]["extensions"] == [".cpp", ".cc", ".c"]


def test_image_create_refuses_a_template_without_the_file_and_writes_nothing(cli):
    code, _, err = cli("image-create --name=go --docker-image=opendevelop/go:latest --run='go run main.go'")

    assert code == 1
    assert err == "manage.py image-create: run: must name the program's file as {file}, e.g. 'python {file}'\n"
    assert list(Image.scan()) == []


def test_image_build_refuses_an_unknown_recipe_before_building(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENDEVELOP_IMAGE_RECIPES", str(tmp_path))

    code, _, err = cli("image-build --name=cobol")

    assert code == 1
    assert "no recipe 'cobol'" in err
    assert list(Path(tmp_path).iterdir()) == []
