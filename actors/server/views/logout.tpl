% rebase('layout.tpl', title=title, refresh=None, token=None)
<h1>Logged out</h1>
<p>The token's cookie is cleared in this browser. <a href="/login">Log in again</a>.</p>
