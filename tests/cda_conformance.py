"""Conformance of the CDA documents the gateway writes: the HL7 CDA R2 schema and the CI-SIS
StructurationMinimale schematron (its compiled XSLT 2 form, run by Saxon-HE via saxonche).

Data written by others: ``CDA.xsd`` (HL7/CDA-core-2.0) and the compiled schematron
(ansforge/TestContenuCDA-2-41) from ../shared/corpora/cda-ans/; the CI-SIS value sets the
schematron reads (``tests/data/cisis-jdv/jeuxDeValeurs/``, see ORIGIN.md there). The compiled
stylesheet finds them at ``../../jeuxDeValeurs/`` from itself: it is run from a copy placed
accordingly.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path

from lxml import etree

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpora" / "cda-ans"
SCHEMA = CORPUS / "schema" / "normative" / "infrastructure" / "cda" / "CDA.xsd"
SCHEMATRON = CORPUS / "schematrons" / "_compiled_CI-SIS_StructurationMinimale.sch.xsl"
VALUE_SETS = Path(__file__).resolve().parent / "data" / "cisis-jdv" / "jeuxDeValeurs"
SVRL = "{http://purl.oclc.org/dsdl/svrl}"


@functools.cache
def _schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMA)))


def schema_errors(xml: bytes) -> list[str]:
    schema = _schema()
    if schema.validate(etree.fromstring(xml)):
        return []
    return [f"line {e.line}: {e.message}" for e in schema.error_log]


@functools.cache
def _stylesheet() -> tuple[object, object]:
    from saxonche import PySaxonProcessor

    place = Path(tempfile.mkdtemp(prefix="passerelle-sch-"))
    (place / "a" / "b").mkdir(parents=True)
    shutil.copy(SCHEMATRON, place / "a" / "b" / SCHEMATRON.name)
    shutil.copytree(VALUE_SETS, place / "jeuxDeValeurs")
    processor = PySaxonProcessor(license=False)
    executable = processor.new_xslt30_processor().compile_stylesheet(
        stylesheet_file=str(place / "a" / "b" / SCHEMATRON.name))
    return processor, executable


def schematron_failures(xml: bytes) -> list[str]:
    """The failed assertions of StructurationMinimale (their text, one line each)."""
    processor, executable = _stylesheet()
    node = processor.parse_xml(xml_text=xml.decode("utf-8"))  # type: ignore[attr-defined]
    report = executable.transform_to_string(xdm_node=node)  # type: ignore[attr-defined]
    svrl = etree.fromstring(report.encode("utf-8"))
    return [" ".join("".join(f.itertext()).split())
            for f in svrl.iter(f"{SVRL}failed-assert")]
