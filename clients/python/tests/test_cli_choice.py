"""``opendevelop run FILE`` without a command: the image that claims the file's extension, and its run template."""

from __future__ import annotations

import pytest
from fakeapi import APP_ID, SECRET, sandbox_json

from opendevelop import Client, Image, cli

CATALOGUE = [
    {"name": "base", "language": "Python", "version": "3.11.2", "run": "python {file}", "extensions": []},
    {
        "name": "gcc",
        "language": "C++",
        "version": "12.2.0",
        "run": "g++ -O2 -o main {file} && ./main",
        "extensions": [".cpp", ".cc", ".c"],
        "run_by_extension": {".c": "gcc -O2 -o main {file} -lm && ./main"},
    },
    {"name": "go", "language": "Go", "version": "1.19.8", "run": "go run {file}", "extensions": [".go"]},
    {
        "name": "java",
        "language": "Java",
        "version": "17.0.15",
        "run": "javac -d . {file} && java {stem}",
        "extensions": [".java"],
    },
    {"name": "python", "language": "Python", "version": "3.11.2", "run": "python3 {file}", "extensions": [".py"]},
]


@pytest.fixture
def od(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENDEVELOP_URL", fake.url)
    monkeypatch.setenv("OPENDEVELOP_APP_ID", APP_ID)
    monkeypatch.setenv("OPENDEVELOP_SECRET", SECRET)
    monkeypatch.chdir(tmp_path)
    for name in ("main.go", "Main.java", "prog.c", "data.csv", "src/my prog.py", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("...\n")

    def run(*argv: str, capsys: pytest.CaptureFixture[bytes]) -> tuple[int, bytes, str]:
        status = cli.main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err.decode()

    return run


def ran(fake, catalogue=CATALOGUE):
    fake.then(200, catalogue).then(201, sandbox_json(status="queued")).then(200, sandbox_json(stdout="ok\n"))


@pytest.mark.parametrize(
    ("files", "image", "cmd", "said"),
    [
        (["main.go"], "go", "go run main.go", "running main.go with image go (Go 1.19.8): go run main.go"),
        (["Main.java"], "java", "javac -d . Main.java && java Main", "with image java (Java 17.0.15)"),
        (["prog.c", "data.csv"], "gcc", "gcc -O2 -o main prog.c -lm && ./main", "with image gcc (C++ 12.2.0)"),
        (["src/my prog.py", "data.csv"], "python", "python3 'src/my prog.py'", "running src/my prog.py with"),
    ],
)
def test_the_image_claiming_the_files_extension_runs_it_with_its_template(
    fake, od, capsysbinary, files, image, cmd, said
):
    ran(fake)

    status, out, err = od("run", *files, capsys=capsysbinary)

    assert (status, out) == (0, b"ok\n")
    assert fake.requests[0].path == "/api/images" and fake.requests[0].query == {"detail": ["true"]}
    body = fake.requests[1].json()
    assert (body["image"], body["cmd"]) == (image, [cmd])
    assert said in err  # it says what it chose, on stderr
    assert sorted(f["name"] for f in body["files"]) == sorted(files)


def test_an_image_given_without_a_command_runs_the_file_with_that_images_template(fake, od, capsysbinary):
    gcc = CATALOGUE[1]
    fake.then(200, gcc).then(201, sandbox_json(status="queued")).then(200, sandbox_json())

    status, _, err = od("run", "prog.c", "--image", "gcc", "-q", capsys=capsysbinary)

    assert status == 0
    assert fake.requests[0].path == "/api/images/gcc"
    assert fake.requests[1].json()["cmd"] == ["gcc -O2 -o main prog.c -lm && ./main"]
    assert err == ""  # -q: nothing said


@pytest.mark.parametrize(
    ("catalogue", "message"),
    [
        (CATALOGUE, "no image claims .txt files (.c, .cc, .cpp, .go, .java, .py); choose one with --image"),
        (
            CATALOGUE
            + [
                {"name": "pypy", "run": "pypy {file}", "extensions": [".txt"]},
                {"name": "awk", "run": "awk -f {file}", "extensions": [".txt"]},
            ],
            "several images claim .txt files (pypy, awk); choose one with --image",
        ),
    ],
)
def test_no_image_or_several_claiming_the_file_is_a_usage_error_that_creates_nothing(
    fake, od, capsysbinary, catalogue, message
):
    fake.then(200, catalogue)

    with pytest.raises(SystemExit) as caught:
        od("run", "notes.txt", capsys=capsysbinary)

    assert caught.value.code == 2
    assert message in capsysbinary.readouterr().err.decode()
    assert [r.method for r in fake.requests] == ["GET"]


def test_images_with_detail_are_described(fake, client: Client):
    fake.then(200, CATALOGUE).then(200, CATALOGUE[2])

    images = client.images(detail=True)
    go = client.image("go")

    assert [i.name for i in images] == ["base", "gcc", "go", "java", "python"]
    assert go == Image("go", language="Go", version="1.19.8", run="go run {file}", extensions=[".go"])
    assert go.claims("cmd/main.go") and not go.claims("main.py") and not go.claims("go")
    assert images[1].command_for("a.cc") == "g++ -O2 -o main a.cc && ./main"
    assert images[0].claims("main.py") is False  # base claims nothing: python does
    with pytest.raises(ValueError, match="does not say how to run"):
        Image("bare").command_for("x.py")


def test_images_long_lists_what_each_image_runs(fake, od, capsysbinary):
    fake.then(200, CATALOGUE[:3])

    status, out, _ = od("images", "-l", capsys=capsysbinary)

    lines = out.decode().splitlines()
    assert status == 0 and lines[0].split() == ["NAME", "LANGUAGE", "VERSION", "EXTENSIONS", "RUN"]
    assert lines[3].split()[:4] == ["go", "Go", "1.19.8", ".go"] and lines[3].endswith("go run {file}")
