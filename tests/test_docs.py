from pathlib import Path

from jobs.tables import tables_markdown


def test_tables_doc_matches_the_table_registry():
    doc = Path(__file__).parents[1] / "docs" / "tables.md"
    assert doc.read_text() == tables_markdown() + "\n", "regenerate with: factory tables > docs/tables.md"
