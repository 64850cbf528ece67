"""Tests for runner.data: the UnifiedQA reader, the synthetic generator and the fetcher."""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from runner.data import (
    DATASET_FORMATS,
    FORMATS,
    OFFICIAL_DATASETS,
    data_hash,
    fetch,
    format_of,
    load_split,
    parse_options,
    parse_tsv,
    read_tsv,
    split_path,
    write_synthetic,
)
from runner.data.example import GROUPS
from runner.errors import DataError, InfraError

SEP = " \\n "  # the literal backslash-n UnifiedQA puts between input parts
# Small files in the bucket's layout, <dataset>/<split>.tsv and <split>_ans.jsonl.
OFFICIAL_FIXTURES = Path(__file__).parent / "fixtures" / "unifiedqa"


def write(root: Path, dataset: str, split: str, content: str | bytes) -> Path:
    """Write a TSV file where load_split looks for it and return its path."""
    path = split_path(root, dataset, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


# ---------------------------------------------------------------- reader


def test_input_parts_split_on_literal_backslash_n_not_newline(tmp_path):
    path = write(tmp_path, "squad1_1", "dev", "who won?" + SEP + "the reds won the cup.\tthe reds\n")
    [ex] = read_tsv(path, "squad1_1", "dev")
    assert ex.question == "who won?"
    assert ex.context == "the reds won the cup."
    assert ex.input == "who won?\nthe reds won the cup."
    assert ex.options == ()
    assert ex.answers == ("the reds",)
    assert (ex.id, ex.format, ex.line) == ("squad1_1/dev/0", "extractive", 1)


def test_mc_options_parsed_case_insensitively_with_letters_lowercased(tmp_path):
    line = "which is warm?" + SEP + "(A) ice (b) the Sun  (C) snow\tthe sun\n"
    [ex] = read_tsv(write(tmp_path, "arc_easy", "dev", line), "arc_easy", "dev")
    assert ex.options == (("a", "ice"), ("b", "the Sun"), ("c", "snow"))
    assert ex.context == ""
    assert ex.format == "multiple_choice"


def test_race_layout_puts_text_after_options_into_context(tmp_path):
    line = "what did tom eat?" + SEP + "(a) fish (b) soup (c) rice (d) bread" + SEP + "tom ate soup.\tsoup\n"
    [ex] = read_tsv(write(tmp_path, "race_string", "train", line), "race_string", "train")
    assert ex.question == "what did tom eat?"
    assert [letter for letter, _ in ex.options] == ["a", "b", "c", "d"]
    assert ex.options[1] == ("b", "soup")
    assert ex.context == "tom ate soup."


def test_option_text_containing_a_later_letter_out_of_order_stays_whole():
    assert parse_options("(A) vitamin (c) pills (B) water") == (("a", "vitamin (c) pills"), ("b", "water"))


def test_narrativeqa_repeated_question_merges_into_one_example_with_all_references(tmp_path):
    q1 = "why did he leave?" + SEP + "he left because of the flood."
    q2 = "where did he go?" + SEP + "he went to the hills."
    content = f"{q1}\tthe flood\n{q2}\tto the hills\n{q1}\tbecause of a flood\n{q1}\tthe flood\n"
    examples = read_tsv(write(tmp_path, "narrativeqa", "dev", content), "narrativeqa", "dev")
    assert [ex.id for ex in examples] == ["narrativeqa/dev/0", "narrativeqa/dev/1"]
    assert examples[0].answers == ("the flood", "because of a flood")
    assert examples[0].line == 1
    assert examples[1].answers == ("to the hills",)


def test_every_malformed_line_is_reported_at_once_with_file_and_line(tmp_path):
    good = "is it?" + SEP + "it is.\tyes"
    lines = [
        good,                                   # 1 fine
        "no tab here",                          # 2
        "a\tb\tc",                              # 3 two tabs
        "   \tyes",                             # 4 empty input
        "is it?" + SEP + "it is.\t  ",          # 5 empty target
        "",                                     # 6 blank line mid-file
        "is it?" + SEP + "caf\xe9 ok\tyes",     # 7 latin-1 byte, see below
        SEP.strip() + " it is.\tyes",           # 8 input starts with the separator: no question
        good,                                   # 9 fine (merged with line 1)
    ]
    data = "\n".join(lines).encode("utf-8").replace("caf\xe9".encode("utf-8"), b"caf\xe9") + b"\n\n\n"
    path = write(tmp_path, "boolq", "dev", data)
    with pytest.raises(DataError) as info:
        read_tsv(path, "boolq", "dev")
    message = str(info.value)
    for line in range(2, 9):
        assert f"{path}:{line}:" in message
    assert f"{path}:1:" not in message and f"{path}:9:" not in message
    assert len(info.value.problems) == 7
    assert "not valid UTF-8" in message and "empty target" in message and "2 tabs" in message


def test_mc_line_without_options_part_is_reported(tmp_path):
    path = write(tmp_path, "openbookqa", "dev", "which is warm?" + SEP + "the sun is warm.\tthe sun\n")
    with pytest.raises(DataError, match=rf"{path}:1: .*no options part"):
        read_tsv(path, "openbookqa", "dev")


def test_trailing_blank_lines_and_crlf_endings_are_accepted(tmp_path):
    content = "is it?" + SEP + "it is.\tyes\r\nis it not?" + SEP + "it is not.\tno\r\n\r\n\n"
    examples = read_tsv(write(tmp_path, "boolq", "dev", content), "boolq", "dev")
    assert [ex.answers for ex in examples] == [("yes",), ("no",)]


def test_missing_split_files_are_all_named_in_one_data_error(tmp_path):
    with pytest.raises(DataError) as info:
        load_split(tmp_path, ["squad1_1", "boolq"], "dev")
    assert str(split_path(tmp_path, "squad1_1", "dev")) in str(info.value)
    assert str(split_path(tmp_path, "boolq", "dev")) in str(info.value)


def test_load_split_keeps_dataset_order_and_limits_each_dataset(tmp_path):
    write(tmp_path, "boolq", "dev", "".join(f"q{i}?{SEP}p{i}.\tyes\n" for i in range(5)))
    write(tmp_path, "squad2", "dev", "".join(f"q{i}?{SEP}p{i}.\tp{i}\n" for i in range(3)))
    examples = load_split(tmp_path, ["squad2", "boolq"], "dev", limit_per_dataset=2)
    assert [ex.id for ex in examples] == ["squad2/dev/0", "squad2/dev/1", "boolq/dev/0", "boolq/dev/1"]


def test_unknown_dataset_is_data_error_suggesting_the_closest_and_listing_known_datasets():
    suggestion = r"unknown dataset 'sqaud1_1' \(did you mean 'squad1_1'\?\); known datasets: .*narrativeqa"
    with pytest.raises(DataError, match=suggestion):
        format_of("sqaud1_1")
    with pytest.raises(DataError, match=r"^unknown dataset 'trivia'; known datasets: "):
        format_of("trivia")  # nothing close: no suggestion
    # 23 official folders (the paper's 20 datasets, ARC as two, and two AI2 science sets) + 4 synthetic.
    assert len(DATASET_FORMATS) == 27 and set(DATASET_FORMATS.values()) == set(FORMATS)


def test_every_official_dataset_has_a_format_a_group_and_bucket_splits():
    for name, spec in OFFICIAL_DATASETS.items():
        assert spec.format in FORMATS and DATASET_FORMATS[name] == spec.format, name
        assert spec.group in GROUPS, name
        assert {"train", "dev"} <= set(spec.splits) <= {"train", "dev", "test"}, name
        assert set(spec.answer_splits) <= set(spec.splits), name
    by_group = {group: {spec.title for spec in OFFICIAL_DATASETS.values() if spec.group == group} for group in GROUPS}
    # The UnifiedQA paper's 8 seen + 12 unseen datasets; its ARC is our arc_easy and arc_hard.
    assert len(by_group["training"] - {"ARC (easy)", "ARC (challenge)"}) + 1 == 8
    assert len(by_group["held_out"]) == 12
    assert {s.format for s in OFFICIAL_DATASETS.values() if s.group == "held_out"} == set(FORMATS)
    assert {n for n, s in OFFICIAL_DATASETS.items() if s.answer_splits} == {"squad1_1", "squad2"}


# ---------------------------------------------------------------- gold-answer files


def squad_dev(tmp_path: Path, answers: list[object] | None, lines: list[str] | None = None) -> Path:
    """Write squad1_1/dev.tsv (default: two questions) and, unless None, its dev_ans.jsonl."""
    lines = lines or ["who ran?" + SEP + "ann ran home.\tann", "where to?" + SEP + "ann ran home.\thome"]
    path = write(tmp_path, "squad1_1", "dev", "".join(line + "\n" for line in lines))
    if answers is not None:
        text = "".join((a if isinstance(a, str) else json.dumps(a)) + "\n" for a in answers)
        (path.parent / "dev_ans.jsonl").write_text(text)
    return path


def test_answers_file_beside_the_split_gives_every_distinct_gold_answer_as_references(tmp_path):
    path = squad_dev(tmp_path, [["ann", "Ann", " ann "], ["home", "ran home", "home"]])
    examples = read_tsv(path, "squad1_1", "dev")
    assert [ex.answers for ex in examples] == [("ann", "Ann"), ("home", "ran home")]
    # Without the file the TSV target is the one reference.
    (path.parent / "dev_ans.jsonl").unlink()
    assert [ex.answers for ex in read_tsv(path, "squad1_1", "dev")] == [("ann",), ("home",)]


def test_merged_duplicate_inputs_get_the_gold_answers_of_all_their_lines(tmp_path):
    line = "who ran?" + SEP + "ann ran home."
    path = squad_dev(tmp_path, [["ann"], ["Ann", "ann"]], [line + "\tann", line + "\tAnn"])
    [ex] = read_tsv(path, "squad1_1", "dev")
    assert ex.answers == ("ann", "Ann") and ex.line == 1


def test_answers_file_with_other_line_count_is_reported_at_the_answers_file(tmp_path):
    path = squad_dev(tmp_path, [["ann"]])
    with pytest.raises(DataError) as info:
        read_tsv(path, "squad1_1", "dev")
    assert [str(p) for p in info.value.problems] == [
        f"{path.parent / 'dev_ans.jsonl'}: 1 answer lines for the 2 lines of dev.tsv; UnifiedQA pairs them line by line"
    ]


def test_answers_file_whose_lines_lack_the_tsv_target_is_reported_as_not_belonging(tmp_path):
    path = squad_dev(tmp_path, [["home"], ["ann"]])  # the lines swapped
    with pytest.raises(DataError) as info:
        read_tsv(path, "squad1_1", "dev")
    assert [(p.file, p.line) for p in info.value.problems] == [(str(path), 1), (str(path), 2)]
    assert "target 'ann' is not among the gold answers on line 1 of dev_ans.jsonl" in str(info.value)


def test_a_thoroughly_misaligned_answers_file_is_summarised_after_five_lines(tmp_path):
    lines = [f"q{i}?" + SEP + f"p{i}.\ta{i}" for i in range(9)]
    path = squad_dev(tmp_path, [["other"]] * 9, lines)
    with pytest.raises(DataError) as info:
        read_tsv(path, "squad1_1", "dev")
    assert len(info.value.problems) == 6
    assert "and 4 more lines whose target is not among their gold answers" in str(info.value.problems[-1])


def test_every_malformed_answers_line_is_reported_with_file_and_line(tmp_path):
    path = squad_dev(tmp_path, ['["ann"', '{"a": 1}', "[]", '["home"]'], [])
    answers = path.parent / "dev_ans.jsonl"
    with pytest.raises(DataError) as info:
        parse_tsv(path.read_bytes(), path, "squad1_1", "dev", answers=answers.read_bytes())
    assert [(p.file, p.line) for p in info.value.problems] == [(str(answers), 1), (str(answers), 2), (str(answers), 3)]
    assert "not JSON" in str(info.value) and "JSON list of answer strings" in str(info.value)


def test_a_split_whose_targets_are_all_hidden_is_rejected(tmp_path):
    path = OFFICIAL_FIXTURES / "commonsenseqa" / "test.tsv"
    with pytest.raises(DataError, match="every target is '-': this split's labels are hidden"):
        read_tsv(path, "commonsenseqa", "test")


def test_data_hash_depends_on_bytes_and_order(tmp_path):
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    a.write_bytes(b"x\ty\n")
    b.write_bytes(b"z\tw\n")
    assert data_hash([a, b]) == data_hash([a, b])
    assert data_hash([a, b]) != data_hash([b, a])
    before = data_hash([a])
    a.write_bytes(b"x\tY\n")
    assert data_hash([a]) != before


# ---------------------------------------------------------------- synthetic generator


def read_bytes_tree(paths: list[Path], root: Path) -> dict[str, bytes]:
    """Map each path (relative to root) to its bytes."""
    return {str(path.relative_to(root)): path.read_bytes() for path in paths}


def test_synthetic_output_is_byte_identical_for_same_arguments(tmp_path):
    first = write_synthetic(tmp_path / "a", n_train=50, n_dev=10, seed=3)
    second = write_synthetic(tmp_path / "b", n_train=50, n_dev=10, seed=3)
    assert read_bytes_tree(first, tmp_path / "a") == read_bytes_tree(second, tmp_path / "b")
    assert len(first) == 8
    other = write_synthetic(tmp_path / "c", n_train=50, n_dev=10, seed=4)
    assert read_bytes_tree(other, tmp_path / "c") != read_bytes_tree(first, tmp_path / "a")


def test_synthetic_train_does_not_change_when_n_dev_changes(tmp_path):
    write_synthetic(tmp_path / "a", n_train=30, n_dev=5)
    write_synthetic(tmp_path / "b", n_train=30, n_dev=9)
    for fmt in FORMATS:
        rel = Path(f"synthetic_{fmt}/train.tsv")
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> dict[tuple[str, str], list]:
    """The synthetic datasets at the default sizes, read back through the UnifiedQA reader."""
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root)
    return {
        (fmt, split): load_split(root, [f"synthetic_{fmt}"], split)
        for fmt in FORMATS
        for split in ("train", "dev")
    }


def test_synthetic_round_trips_through_reader_with_right_format_and_counts(synthetic):
    for (fmt, split), examples in synthetic.items():
        assert len(examples) == (400 if split == "train" else 60)
        assert {ex.format for ex in examples} == {fmt}
        assert all(ex.question and ex.context and ex.answers for ex in examples)
        # Short enough for a small model on CPU.
        assert max(len(ex.input.split()) for ex in examples) < 60


def test_synthetic_yes_no_labels_are_balanced(synthetic):
    for split, n in (("train", 400), ("dev", 60)):
        answers = [ex.answers for ex in synthetic["yes_no", split]]
        assert answers.count(("yes",)) == answers.count(("no",)) == n // 2


def test_synthetic_mc_targets_are_one_of_four_options(synthetic):
    letters_of_answer = set()
    for ex in synthetic["multiple_choice", "train"]:
        assert [letter for letter, _ in ex.options] == ["a", "b", "c", "d"]
        texts = [text for _, text in ex.options]
        assert len(set(texts)) == 4 and texts.count(ex.answers[0]) == 1
        letters_of_answer.add(ex.options[texts.index(ex.answers[0])][0])
    assert letters_of_answer == {"a", "b", "c", "d"}


def test_synthetic_extractive_targets_occur_verbatim_in_context(synthetic):
    for split in ("train", "dev"):
        for ex in synthetic["extractive", split]:
            assert ex.answers[0] in ex.context


def test_synthetic_abstractive_repeats_some_questions_with_two_references(synthetic):
    examples = synthetic["abstractive", "train"]
    multi = [ex for ex in examples if len(ex.answers) == 2]
    assert 0.1 * len(examples) < len(multi) < 0.5 * len(examples)
    assert all(len(set(ex.answers)) == len(ex.answers) for ex in examples)


def test_synthetic_dev_inputs_never_equal_train_inputs(synthetic):
    for fmt in FORMATS:
        train = {ex.input for ex in synthetic[fmt, "train"]}
        assert not train & {ex.input for ex in synthetic[fmt, "dev"]}


def test_synthetic_questions_are_varied(synthetic):
    for fmt in FORMATS:
        openings = {" ".join(ex.question.split()[:2]) for ex in synthetic[fmt, "train"]}
        assert len(openings) >= 5, (fmt, openings)


# ---------------------------------------------------------------- fetch


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves fixture files, counting requests; some paths misbehave on purpose."""

    requests: list[str]
    release: threading.Event

    def do_GET(self):  # noqa: N802 - the http.server API name
        self.requests.append(self.path)
        if self.path.startswith("/race_string/"):
            # Promise 1000 bytes, send 10, hang up: the client must not keep the 10.
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            return
        if self.path.startswith("/mctest_corrected_the_separator/"):
            self.release.wait(5)  # outlasts the client's timeout
            return
        if self.path.startswith("/narrativeqa/"):
            self.send_error(503)
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def _serving(directory: Path, monkeypatch):
    """A local HTTP server for `directory`; yields (base URL, request log)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    requests: list[str] = []
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"requests": requests, "release": release})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(directory)))
    # A short poll interval makes shutdown() return in ~10 ms instead of the default 0.5 s.
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", requests
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server holding squad1_1 and boolq dev files; yields (base URL, request log)."""
    remote = tmp_path / "remote"
    write(remote, "squad1_1", "dev", "who?" + SEP + "ann ran.\tann\n")
    write(remote, "boolq", "dev", "is it?" + SEP + "it is.\tyes\n")
    with _serving(remote, monkeypatch) as served:
        yield served


def leftovers(folder: Path) -> list[str]:
    """Every file under folder, temporary ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_fetch_downloads_each_file_into_its_dataset_folder(server, tmp_path):
    base_url, _ = server
    to = tmp_path / "data"
    messages: list[str] = []
    paths = fetch(["squad1_1", "boolq"], ["dev"], to, base_url=base_url, log=messages.append)
    assert paths == [to / "squad1_1" / "dev.tsv", to / "boolq" / "dev.tsv"]
    assert paths[0].read_bytes() == (tmp_path / "remote/squad1_1/dev.tsv").read_bytes()
    assert load_split(to, ["squad1_1", "boolq"], "dev")[1].answers == ("yes",)
    assert leftovers(to) == ["boolq/dev.tsv", "squad1_1/dev.tsv"]
    assert any(base_url in m for m in messages)


def test_fetch_skips_files_already_present_but_returns_them(server, tmp_path):
    base_url, requests = server
    to = tmp_path / "data"
    write(to, "boolq", "dev", "local\tcopy\n")
    (to / "squad1_1").mkdir()
    (to / "squad1_1/dev_ans.jsonl").write_text('["ann"]\n')
    first = fetch(["squad1_1", "boolq"], ["dev"], to, base_url=base_url, log=lambda _: None)
    second = fetch(["squad1_1", "boolq"], ["dev"], to, base_url=base_url, log=lambda _: None)
    assert first == second
    assert requests == ["/squad1_1/dev.tsv"]
    assert (to / "boolq/dev.tsv").read_text() == "local\tcopy\n"


def test_fetch_404_is_data_error_naming_every_missing_url(server, tmp_path):
    base_url, _ = server
    to = tmp_path / "data"
    with pytest.raises(DataError) as info:
        fetch(["squad1_1", "boolq"], ["train"], to, base_url=base_url, log=lambda _: None)
    assert f"{base_url}/squad1_1/train.tsv" in str(info.value)
    assert f"{base_url}/boolq/train.tsv" in str(info.value)
    assert "404" in str(info.value)
    assert leftovers(to) == []


def test_fetch_without_an_answers_file_on_the_server_notes_it_and_keeps_the_split(server, tmp_path):
    base_url, requests = server
    to = tmp_path / "data"
    messages: list[str] = []
    fetch(["squad1_1"], ["dev"], to, base_url=base_url, log=messages.append)
    assert requests == ["/squad1_1/dev_ans.jsonl", "/squad1_1/dev.tsv"]
    assert any(m.startswith(f"note: cannot download {base_url}/squad1_1/dev_ans.jsonl: HTTP 404") for m in messages)
    assert leftovers(to) == ["squad1_1/dev.tsv"]


def test_fetch_unknown_dataset_is_rejected_before_any_download(server, tmp_path):
    base_url, requests = server
    with pytest.raises(DataError, match=r"unknown dataset 'squad3' \(did you mean 'squad2'\?\)"):
        fetch(["squad1_1", "squad3"], ["dev"], tmp_path / "data", base_url=base_url, log=lambda _: None)
    with pytest.raises(DataError, match="generated locally"):
        fetch(["synthetic_yes_no"], ["dev"], tmp_path / "data", base_url=base_url, log=lambda _: None)
    assert requests == []


def test_fetch_of_a_split_the_bucket_lacks_is_rejected_before_any_download(server, tmp_path):
    base_url, requests = server
    with pytest.raises(DataError) as info:
        fetch(["narrativeqa", "squad1_1", "boolq"], ["test"], tmp_path / "data", base_url=base_url, log=lambda _: None)
    assert [str(p) for p in info.value.problems] == [
        "squad1_1 has no 'test' split in the UnifiedQA bucket; it has train, dev",
        "boolq has no 'test' split in the UnifiedQA bucket; it has train, dev",
    ]
    assert requests == []


@pytest.fixture
def official_server(monkeypatch):
    """A local HTTP server holding tests/fixtures/unifiedqa; yields (base URL, request log)."""
    with _serving(OFFICIAL_FIXTURES, monkeypatch) as served:
        yield served


def test_fetched_official_files_parse_with_each_datasets_format(official_server, tmp_path):
    base_url, requests = official_server
    datasets = sorted(p.name for p in OFFICIAL_FIXTURES.iterdir())
    to = tmp_path / "data"
    paths = fetch(datasets, ["dev"], to, base_url=base_url, log=lambda _: None)
    assert paths == [split_path(to, d, "dev") for d in datasets]
    answers = ["/squad1_1/dev_ans.jsonl", "/squad2/dev_ans.jsonl"]
    assert sorted(requests) == sorted([f"/{d}/dev.tsv" for d in datasets] + answers)
    for dataset in datasets:
        examples = load_split(to, [dataset], "dev")
        assert {ex.format for ex in examples} == {OFFICIAL_DATASETS[dataset].format}, dataset
    # Quoref and NatQA repeat a question once per gold answer; the reader merges the lines.
    assert [ex.answers for ex in load_split(to, ["quoref", "natural_questions_with_dpr_para"], "dev")] == [
        ("Teo", "her brother Teo"), ("Ada Hollis", "Hollis"),
    ]


def test_fetched_squad_dev_examples_carry_every_gold_answer_of_the_answers_file(official_server, tmp_path):
    base_url, _ = official_server
    to = tmp_path / "data"
    fetch(["squad1_1", "squad2"], ["dev"], to, base_url=base_url, log=lambda _: None)
    assert leftovers(to) == ["squad1_1/dev.tsv", "squad1_1/dev_ans.jsonl", "squad2/dev.tsv", "squad2/dev_ans.jsonl"]
    squad1, squad2 = load_split(to, ["squad1_1"], "dev"), load_split(to, ["squad2"], "dev")
    assert [ex.answers for ex in squad1] == [
        ("River Wend", "the River Wend"), ("1204", "in 1204"), ("a market town", "market town"),
    ]
    assert [ex.answers for ex in squad2] == [("<No Answer>",), ("River Wend", "the River Wend")]


def test_fetch_without_splits_takes_train_and_dev(official_server, tmp_path):
    base_url, requests = official_server
    with pytest.raises(DataError, match="HTTP 404"):  # the fixtures hold no train files
        fetch(["commonsenseqa"], None, tmp_path / "data", base_url=base_url, log=lambda _: None)
    assert requests == ["/commonsenseqa/train.tsv", "/commonsenseqa/dev.tsv"]


def test_fetch_unreachable_port_is_infra_error_naming_url(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed when the block ends, so nothing listens there
    base_url = f"http://127.0.0.1:{port}"
    to = tmp_path / "data"
    with pytest.raises(InfraError) as info:
        fetch(["squad1_1"], ["train"], to, base_url=base_url, log=lambda _: None)
    assert f"cannot reach {base_url}/squad1_1/train.tsv" in str(info.value)
    assert "offline" in str(info.value)
    assert leftovers(to) == []


def test_fetch_connection_cut_mid_body_leaves_no_partial_file(server, tmp_path):
    base_url, _ = server
    to = tmp_path / "data"
    with pytest.raises(InfraError, match=f"{base_url}/race_string/dev.tsv"):
        fetch(["race_string"], ["dev"], to, base_url=base_url, log=lambda _: None)
    assert leftovers(to) == []


def test_fetch_timeout_and_server_error_are_infra_errors(server, tmp_path):
    base_url, _ = server
    to = tmp_path / "data"
    with pytest.raises(InfraError, match="timed out"):
        fetch(["mctest_corrected_the_separator"], ["dev"], to, base_url=base_url, timeout=0.2,
              log=lambda _: None)
    with pytest.raises(InfraError, match="HTTP 503"):
        fetch(["narrativeqa"], ["dev"], to, base_url=base_url, log=lambda _: None)
    assert leftovers(to) == []
