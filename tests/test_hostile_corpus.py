"""The hostile corpus of ``benchmarks.hostile_corpus`` (200+ broken, hostile and odd files) streamed with the
default limits through ``python -m runtime.stream`` on the tiny real model folder: every file one verdict or error
line as expected, the summary matching the lines, peak RSS under the target."""
from __future__ import annotations

from helpers.model_folder import make_folder

from benchmarks import hostile_corpus


def test_every_hostile_file_gives_one_line_and_the_stream_goes_on(tmp_path):
    model = make_folder(tmp_path / "model").root
    folder = tmp_path / "corpus"
    corpus = hostile_corpus.write_corpus(folder)
    result = hostile_corpus.stream_folder(model, folder, tmp_path, batch=8)
    problems, counts = hostile_corpus.check(corpus, result, folder)
    print(hostile_corpus.report(corpus, result, counts, problems))
    assert problems == []
    assert len(result.records) >= 200 and result.summary[1] >= 100  # hostile files really were errors
    assert counts["header bomb"]["error"] == len([e for e in corpus.values() if e.category == "header bomb"])
    assert result.peak_rss_mib < hostile_corpus.PEAK_RSS_TARGET_MIB
