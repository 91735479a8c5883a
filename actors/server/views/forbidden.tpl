% rebase('layout.tpl', title=title, refresh=None)
<h1>403: needs the {{scope}} scope</h1>
<p>This page needs a token with the <strong>{{scope}}</strong> scope; this one has
{{', '.join(token.scopes)}}. Ask for one with
<code>dctrl server token add NAME --scope {{scope}}</code>, then <a href="/login">log in</a> with it.</p>
<p><a href="/">dashboard</a></p>
