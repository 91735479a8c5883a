<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>{{title}}</title></head>
<body style="font-family: sans-serif; max-width: 40em; line-height: 1.4">
{{!base}}
% if opt_out:
<p style="color: #666; font-size: smaller">You can turn off these {{kind}} mails: ask a member of the board.</p>
% end
<p style="color: #666; font-size: smaller">{{space}}</p>
</body>
</html>
