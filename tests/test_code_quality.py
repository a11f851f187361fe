from evaluators.code_quality import mean_score, parse_prefix_score


def test_valid_code_scores_one():
  assert parse_prefix_score('def f(x):\n    return x + 1\n') == 1.0


def test_score_is_the_longest_parsable_whole_line_prefix():
  text = 'import os\nx = 1\ny = (2 +\nz = 3'
  # 'import os\nx = 1' parses; adding the unclosed paren line never parses again
  assert parse_prefix_score(text) == 2 / 4


def test_a_block_header_alone_does_not_parse_but_its_body_completes_it():
  assert parse_prefix_score('if x:\n    y = 1\nelse') == 2 / 3
  assert parse_prefix_score('if x:') == 0.0


def test_garbage_and_empty():
  assert parse_prefix_score('') == 0.0
  assert parse_prefix_score(')))\nx = 1') == 0.0
  assert mean_score(['x = 1', ')))']) == 0.5
