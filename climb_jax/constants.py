"""Fixed vocabularies shared by every module: special tokens and part-of-speech classes."""

# RoBERTa's special tokens, always the first ids of every vocabulary this project builds.
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
BOS_ID, PAD_ID, EOS_ID, UNK_ID, MASK_ID = 0, 1, 2, 3, 4
NUM_SPECIAL = len(SPECIAL_TOKENS)

# The 12 universal part-of-speech tags, in the order the vocabulary curriculum ranks them
# (CLIMB: nouns first, "other" last). A token's pos id is its tag's index here.
POS_TAGS = ("NOUN", "VERB", "ADJ", "ADV", "PRON", "DET", "ADP", "NUM", "CONJ", "PRT", ".", "X")
POS_INDEX = {tag: i for i, tag in enumerate(POS_TAGS)}
POS_X = POS_INDEX["X"]
NUM_POS = len(POS_TAGS)
