"""Every link in README.md and docs/*.md to a file of the repository names a file that exists
(``tools.doc_examples.broken_links``, which ``python -m tools.doc_examples --check`` runs too)."""

from __future__ import annotations

from tools.doc_examples import ROOT, broken_links, documents, links


def test_every_link_to_a_file_of_the_repository_resolves():
    paths = documents()
    assert ROOT / "README.md" in paths and len(paths) > 10
    assert sum(len(links(p)) for p in paths) > 20  # the links were found
    assert broken_links(paths) == []


def test_a_link_to_a_missing_file_is_reported_and_urls_anchors_and_code_are_not(tmp_path):
    (tmp_path / "there.md").write_text("here\n")
    page = tmp_path / "page.md"
    page.write_text("See [there](there.md#a-heading), ![a picture](pictures/gone.png) and [the site](https://x.org).\n"
                    "[this page](#top), `[not a link](nowhere.md)`\n"
                    "```\n[in a code block](nowhere.md)\n```\n"
                    "[gone](../gone.md)\n")
    assert broken_links([page]) == [f"{page}:1: the link pictures/gone.png names no file",
                                    f"{page}:6: the link ../gone.md names no file"]
