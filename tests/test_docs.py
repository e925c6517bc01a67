
from jobs.lakehouse.tables import tables_markdown
from tests import REPO


def test_tables_doc_matches_the_table_registry():
    doc = REPO / "docs" / "tables.md"
    assert doc.read_text() == tables_markdown() + "\n", "regenerate with: factory tables > docs/tables.md"


def test_readme_dag_picture_names_every_step_and_table():
    from jobs.lakehouse.tables import ALL_TABLES
    from jobs.steps import STEP_NAMES

    readme = (REPO / "README.md").read_text()
    mermaid = readme.split("```mermaid", 1)[1].split("```", 1)[0]
    for name in [*STEP_NAMES, *(spec.name for spec in ALL_TABLES)]:
        assert f"{name}" in mermaid, f"README's DAG picture lacks {name}"
    for spec in ALL_TABLES:
        assert f"{spec.owner} -.->" in mermaid
