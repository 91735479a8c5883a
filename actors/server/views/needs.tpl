<p class="needs">needs the {{scope}} scope</p>
