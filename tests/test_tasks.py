"""Task files come from anyone: their templates render in a sandbox, and a bad one is an error that
names the file."""

from __future__ import annotations

import pytest

from conftest import run_cli
from protege.errors import DataError, UserError
from protege.tasks import load_task

ATTRIBUTE_WALKS = [
    "{{ text.__class__.__mro__ }}",
    "{{ ''.__class__.__subclasses__() }}",
    "{{ text.__class__.__mro__[1].__subclasses__()[0].__init__.__globals__ }}",
    "{{ text['__class__'] }}",
    "{{ '{0.__class__}'.format(text) }}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ items.append('x') }}",  # the record's values are not the template's to change
]


@pytest.mark.parametrize("template", ATTRIBUTE_WALKS)
def test_an_attribute_walking_template_is_refused_naming_the_task_file(tmp_path, template):
    path = tmp_path / "evil.yaml"
    path.write_text("name: evil\ninput: |-\n  " + template + "\n")
    task = load_task(path)
    with pytest.raises(UserError, match="sandbox") as err:
        task.render({"text": "hello", "items": ["a"]})
    assert str(err.value).startswith(f"{path}: task 'evil': input template refused by the sandbox")


def test_import_with_an_evil_task_stops_with_exit_2_and_the_file_name(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: evil\ninput: '{{ text.__class__.__mro__ }}'\n")
    data = tmp_path / "in.jsonl"
    data.write_text('{"text": "hello", "label": "joy"}\n')
    r = run_cli("data", "import", str(data), "--task", str(path))
    assert r.returncode == 2 and f"{path}: task 'evil': input template refused by the sandbox" in r.stderr
    assert "__mro__" not in r.stdout


def test_ordinary_templates_still_render_and_missing_fields_are_errors(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(
        "name: ok\ninput: |-\n  {{ title | upper }}: {{ text }}{% if context is defined %} ({{ context }}){% endif %}"
        "{% for t in tags %} #{{ t }}{% endfor %}\n"
    )
    task = load_task(path)
    assert task.render({"title": "q", "text": "hi", "tags": ["a", "b"]}) == "Q: hi #a #b"
    assert task.render({"title": "q", "text": "hi", "context": "c", "tags": []}) == "Q: hi (c)"
    with pytest.raises(DataError, match="needs a field the record lacks"):
        task.render({"text": "hi", "tags": []})


def test_a_template_that_does_not_compile_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\ninput: '{{ text '\n")
    with pytest.raises(UserError, match=rf"^{path}: input: template line 1: unexpected end of template"):
        load_task(path)
