from tracker.domain.macros import compile_template, render


def test_known_unknown_and_empty_macros():
    template = compile_template("https://o.example/{sub1}/lp?c={clickid}&x={nope}&e={external_id}")
    url = render(template, {"clickid": "abc", "sub1": "s1", "external_id": None})
    assert url == "https://o.example/s1/lp?c=abc&x=&e="


def test_values_are_url_encoded():
    template = compile_template("https://o.example/?q={sub2}")
    url = render(template, {"sub2": "a b&c=d/é?#"})
    assert url == "https://o.example/?q=a%20b%26c%3Dd%2F%C3%A9%3F%23"


def test_template_without_macros_is_unchanged():
    assert render(compile_template("https://o.example/x?y=1"), {}) == "https://o.example/x?y=1"
