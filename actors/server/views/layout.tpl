<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
% if get('refresh'):
<meta http-equiv="refresh" content="{{refresh}}">
% end
<title>{{title}} - dctrl</title>
<link rel="stylesheet" href="/static/style.css">
<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">
</head>
<body>
<header>
<nav>
<a class="brand" href="/">dctrl</a>
% if token:
%   for href, label, scope in nav:
%     if scope in token.scopes:
<a href="{{href}}"{{!' class="here"' if path == href else ''}}>{{label}}</a>
%     end
%   end
<span class="who">{{token.name}} ({{', '.join(token.scopes)}}) <a href="/logout">log out</a></span>
% else:
<a href="/login">log in</a>
% end
</nav>
</header>
<main>
{{!base}}
</main>
<footer>dctrl report server: read-only</footer>
</body>
</html>
