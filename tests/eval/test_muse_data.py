"""The MUSE data: cloze questions from text without an LLM, shots apart from questions, four-name items."""

from __future__ import annotations

from saeguard.eval.muse_data import BLANK, MuseSizes, cloze_questions, first_answer, knowmem_set


def test_cloze_questions_blank_recurring_names_only():
    text = (
        "Elizabeth walked to town with Jane and Mr Darcy. Then Elizabeth smiled at Darcy kindly today. "
        "Lady Catherine said that Jane was pretty and kind. Darcy thought that Elizabeth was very clever."
    )
    questions = cloze_questions([text], min_count=2)
    assert [q.answer for q in questions] == ["Jane", "Elizabeth", "Jane", "Elizabeth"]
    assert questions[0].question == f"Elizabeth walked to town with {BLANK} and Mr Darcy."
    # sentence-initial words ("Then"), the title "Lady" and the once-seen "Catherine" are never blanked
    assert all(q.answer not in {"Then", "Lady", "Catherine"} for q in questions)


def test_knowmem_shots_and_questions_come_from_different_documents():
    docs = [f"On day {i} the friend of Emma met Harriet near Hartfield again." for i in range(40)]
    known = knowmem_set(docs, MuseSizes(knowmem_shots=2, knowmem_questions=5, min_name_count=3), "test")
    assert len(known.shots) == 2 and len(known.questions) == 5
    assert not {q.question for q in known.shots} & {q.question for q in known.questions}
    assert first_answer(" Harriet.\nSentence: x") == "Harriet"


def test_choice_items_offer_the_answer_and_three_other_names_of_the_set():
    from saeguard.eval.muse_data import ClozeQuestion, KnowMemSet, choice_items

    names = ["Anne", "Frederick", "Louisa", "Mary", "Walter"]
    known = KnowMemSet(
        shots=[ClozeQuestion(f"{BLANK} walked.", "Walter")],
        questions=[ClozeQuestion(f"She saw {BLANK} there.", name) for name in names[:4]],
    )
    items = choice_items(known, seed=1)
    assert len(items) == 4 and len({item.id for item in items}) == 4
    for item, question in zip(items, known.questions, strict=True):
        assert item.choices[item.answer] == question.answer and question.question in item.question
        assert len(set(item.choices)) == 4 and set(item.choices) <= set(names)
